"""Loading OpenAI ADM state dicts as teachers, nothing in the file ever running; the CTM student of that family."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from ctm.networks import EDMPrecond
from ctm.student import CTMPrecond, is_s_path_key, student_from_teacher
from ctm.teachers import ADM_PRESETS, EDMTeacher, TeacherError, load_adm
from ctm.teachers.edm import RefusedPickleError
from pipeline.config import ConfigError, load_config
from pipeline.teachers import build_teacher
from pipeline.train.state import build_student, student_kwargs
from test_networks_adm import TINY, fixture

IMAGENET64 = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "imagenet64.yaml"
TINY_OVERRIDES = {k: v for k, v in TINY.items() if k != "model_type"}


def teacher_state(state):
    return {k: v for k, v in state.items() if not is_s_path_key(k)}


@pytest.fixture
def tiny_pt(tmp_path):
    """A tiny ADM teacher saved as OpenAI saves it (torch.save of the UNetModel state dict), and the fixture."""
    data = fixture()
    path = tmp_path / "edm_tiny_ema.pt"
    torch.save(teacher_state(data[0]), path)
    return path, data


def load_tiny(path):
    return load_adm(path, "imagenet64", **TINY_OVERRIDES)


# ---- loading ------------------------------------------------------------------------------------------------------

def test_loaded_teacher_is_the_official_denoiser(tiny_pt):
    path, (_, x, t, _, labels, out) = tiny_pt
    net = load_tiny(path)
    assert isinstance(net, EDMPrecond) and not net.training and not any(p.requires_grad for p in net.parameters())
    assert {**ADM_PRESETS["imagenet64"], **TINY_OVERRIDES}.items() <= net.init_kwargs.items()
    denoised = EDMTeacher(net).denoise(x, t, labels.argmax(1))
    torch.testing.assert_close(denoised, out["teacher_denoised"], rtol=1e-5, atol=1e-5)


def test_a_float16_state_dict_loads_into_float32_weights(tiny_pt, tmp_path):
    path, (state, x, t, _, labels, _) = tiny_pt
    half = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in teacher_state(state).items()}, half)
    net, reference = load_tiny(half), load_tiny(path)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), reference.state_dict().values()))


# ---- refusing what an ADM state dict never holds -------------------------------------------------------------------

class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("writer, refusal", [("torch.save", f"it names {os.system.__module__}.system"),
                                             ("pickle protocol 2", f"it names {os.system.__module__}.system"),
                                             ("pickle protocol 4", "it holds pickle instructions that torch.load "
                                                                   "does not read")])
def test_code_in_the_file_is_refused_and_never_run(tmp_path, writer, refusal):
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"time_embed.0.weight": torch.zeros(1), "payload": RunsCode(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"payload": RunsCode(marker)}, protocol=int(writer[-1])))
    with pytest.raises(RefusedPickleError, match=rf"{path}: refused by torch.load\(weights_only=True\): {refusal}, "
                                                 r"but an ADM state dict .* nothing in it was run\.$"):
        load_adm(path)
    assert not marker.exists()
    torch.load(path, weights_only=False) if writer == "torch.save" else pickle.loads(path.read_bytes())
    assert marker.exists()  # unrestricted, the same file does run its code


def test_a_whole_pickled_network_is_refused_by_name(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(RefusedPickleError, match=r"names torch\.nn\.modules\.linear\.Linear,.*must be re-saved as "
                                                 r"its state_dict\(\)\.$"):
        load_adm(path)


@pytest.mark.parametrize("content, message", [(b"", "is neither a torch.save zip archive nor a pickle"),
                                              (b"model_channels: 192\n", "is neither a torch.save zip archive"),
                                              (b"\x80\x02", "could not be read by torch.load")])
def test_a_file_that_torch_cannot_read_is_named(tmp_path, content, message):
    path = tmp_path / "edm_imagenet64_ema.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path} {message}.*edm_imagenet64_ema.pt"):
        load_adm(path)


@pytest.mark.parametrize("data, message", [
    ([torch.zeros(1)], "holds a list, expected a dict of tensors"),
    ({"model": {"out.2.weight": torch.zeros(1)}, "step": 3, "ema.weight": torch.zeros(1)},
     r"entries \['model', 'step'\] are not tensors"),
])
def test_something_else_than_a_state_dict_is_named(tmp_path, data, message):
    path = tmp_path / "ckpt.pt"
    torch.save(data, path)
    with pytest.raises(ValueError, match=f"{path}: not an ADM state dict: .*{message}"):
        load_adm(path)


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_a_state_dict_with_nan_or_inf_is_refused_naming_the_tensor(tiny_pt, tmp_path, value):
    path, _ = tiny_pt
    state = torch.load(path, weights_only=True)
    key = sorted(state)[-1]
    state[key].view(-1)[0] = value
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(TeacherError, match=rf"{tmp_path / 'nan.pt'}: tensor '{key}' holds 1 of {state[key].numel()} "
                                           "values that are NaN or Inf"):
        load_tiny(tmp_path / "nan.pt")


def test_missing_and_unexpected_keys_are_named(tiny_pt, tmp_path):
    path, (state, *_) = tiny_pt
    state = teacher_state(state)
    state["input_blocks.1.0.emb_layers.2.weight"] = state.pop("input_blocks.1.0.emb_layers.1.weight")
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"{path}: not an ADM state dict of preset 'imagenet64': missing keys 1 "
                                         r"\['input_blocks.1.0.emb_layers.1.weight'\], unexpected keys 1 "
                                         r"\['input_blocks.1.0.emb_layers.2.weight'\]\. Check the preset"):
        load_tiny(path)


def test_a_ctm_student_checkpoint_is_not_a_teacher(tiny_pt, tmp_path):
    path, (state, *_) = tiny_pt
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys 0 \[\], unexpected keys 24 \[.*CTM student checkpoint, "
                                         r"not a teacher"):
        load_tiny(path)


def test_shapes_that_differ_from_the_preset_are_named(tiny_pt):
    path, _ = tiny_pt
    with pytest.raises(ValueError, match=r"1 tensors differ in shape from preset 'imagenet64': "
                                         r"label_emb.weight: file \(5, 128\), preset \(6, 128\)\.$"):
        load_adm(path, "imagenet64", **TINY_OVERRIDES | dict(label_dim=6))
    with pytest.raises(ValueError, match="unknown ADM preset 'cifar10'; choose one of \\['imagenet64'\\]"):
        load_adm(path, "cifar10")


def test_guided_diffusion_attention_weights_are_named(tiny_pt, tmp_path):
    path, (state, *_) = tiny_pt
    state = {k: v.squeeze(-1) if k.endswith(("qkv.weight", "proj_out.weight")) else v
             for k, v in teacher_state(state).items()}  # guided-diffusion's Conv1d attention: (3C, C, 1)
    torch.save(state, path)
    with pytest.raises(ValueError, match="3-D qkv weights are guided-diffusion's Conv1d attention"):
        load_tiny(path)


# ---- the CTM student of this family -------------------------------------------------------------------------------

def test_student_holds_every_teacher_weight_and_a_random_s_path(tiny_pt):
    path, _ = tiny_pt
    teacher = load_tiny(path)
    torch.manual_seed(0)
    student = student_from_teacher(teacher)
    teacher_sd, student_sd = teacher.state_dict(), student.state_dict()
    assert all(torch.equal(student_sd[k], v) for k, v in teacher_sd.items())
    s_keys = [k for k in student_sd if k not in teacher_sd]
    resblocks = [k.removesuffix(".emb_layers.1.weight") for k in teacher_sd if k.endswith(".emb_layers.1.weight")]
    expected = [f"model.time_embed_s.{i}" for i in (0, 2)] + [f"{block}.emb_layers_s.1" for block in resblocks]
    assert len(resblocks) == 10 and sorted(s_keys) == sorted(f"{k}.{p}" for k in expected for p in ("weight", "bias"))
    for k in s_keys:
        assert student_sd[k].shape == teacher_sd[k.replace("_s.", ".")].shape and student_sd[k].std() > 0, k


def test_student_with_the_official_s_path_weights_is_the_official_G(tiny_pt):
    path, (state, x, t, s, labels, out) = tiny_pt
    student = student_from_teacher(load_tiny(path)).eval()
    student.model.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(student.g(x, t, s, labels), out["student_g"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(student(x, t, s, labels), out["student_G"], rtol=1e-5, atol=1e-5)
        assert torch.equal(student(x, t, t, labels), x)  # G(x, t, t) = x


def test_student_noise_labels_are_250_ln_sigma(tiny_pt):
    path, (_, x, t, s, labels, _) = tiny_pt
    student = student_from_teacher(load_tiny(path)).eval()
    seen = {}
    student.model.register_forward_hook(lambda m, args, kwargs, _: seen.update(t=args[1], s=kwargs["noise_labels_s"]),
                                        with_kwargs=True)
    with torch.no_grad():
        student.g(x, t, s, labels)
    torch.testing.assert_close(seen["t"], 250 * t.log(), rtol=1e-6, atol=0)
    torch.testing.assert_close(seen["s"], 250 * s.log(), rtol=1e-6, atol=0)


def test_last_layer_weight_is_the_last_resblocks_zero_initialised_conv():
    with torch.device("meta"):
        student = CTMPrecond(**ADM_PRESETS["imagenet64"])
    name = next(k for k, p in student.named_parameters() if p is student.last_layer_weight())
    assert name == "model.output_blocks.15.0.out_layers.3.weight"


# ---- the pipeline's teacher.kind adm ------------------------------------------------------------------------------

def test_imagenet64_config_builds_the_adm_teacher_and_its_student(tiny_pt, monkeypatch):
    path, (_, x, t, _, labels, out) = tiny_pt
    monkeypatch.setitem(ADM_PRESETS, "tiny", {**ADM_PRESETS["imagenet64"], **TINY_OVERRIDES})
    cfg = load_config(IMAGENET64, [f"teacher.path={path}", "teacher.key=tiny"])
    assert load_config(IMAGENET64).teacher.key in ADM_PRESETS
    teacher = build_teacher(cfg)
    identity = teacher.identity()
    assert (identity["kind"], identity["image_shape"], identity["label_dim"]) == ("adm", [3, 8, 8], 5)
    torch.testing.assert_close(teacher.denoise(x, t, labels), out["teacher_denoised"], rtol=1e-5, atol=1e-5)
    kwargs = student_kwargs(cfg, teacher)
    assert kwargs["model_type"] == "ADMUNet" and kwargs["dropout"] == 0.0  # the official ImageNet student: dropout 0
    G = build_student(cfg, kwargs, teacher)
    assert all(torch.equal(G.state_dict()[k], v) for k, v in teacher.net.state_dict().items())


def test_pipeline_errors_name_the_key(tiny_pt, tmp_path):
    path, _ = tiny_pt
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(os.getcwd, protocol=2))
    with pytest.raises(RefusedPickleError, match=rf"^teacher.path: {tmp_path / 'evil.pt'}: refused by torch.load"):
        build_teacher(load_config(IMAGENET64, [f"teacher.path={tmp_path / 'evil.pt'}"]))
    with pytest.raises(ConfigError, match=r"'teacher.key'.*preset, one of \['imagenet64'\]; got 'ema'"):
        build_teacher(load_config(IMAGENET64, [f"teacher.path={path}", "teacher.key=ema"]))
    with pytest.raises(FileNotFoundError, match="teacher.path: no ADM state dict at .*edm_imagenet64_ema.pt"):
        build_teacher(load_config(IMAGENET64, [f"teacher.path={tmp_path / 'none.pt'}"]))
    with pytest.raises(ConfigError, match="'teacher.path': an ADM teacher needs the path of its .pt"):
        load_config(IMAGENET64, ["teacher.path=null"])
