"""Loading NVlabs EDM pickles: the network comes back weight for weight, and nothing in the file ever runs."""

import builtins
import hashlib
import json
import os
import pickle
import subprocess
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from ctm.networks import build_edm_network
from ctm.teachers import TeacherError
from ctm.teachers.edm import RefusedPickleError, TorchModuleDict, load_edm, read_edm_pickle, weights_digest

FIXTURES = Path(__file__).parent / "fixtures" / "edm"
TINY = json.loads((FIXTURES / "networks.json").read_text())["tiny_fixtures"]
EDM_PROTOCOL = 4  # pickle.dump's default on the Python 3.8 that EDM ran


# ---- what NVlabs' torch_utils.persistence and dnnlib.util look like to pickle; present only while writing ----------

def _reconstruct_persistent_obj(meta):
    raise AssertionError("NVlabs code must never run while loading")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):
    __module__ = "dnnlib.util"


class EDMLoss:
    """A persistent non-module object, as EDM's loss_fn in network-snapshot files."""

    def __init__(self):
        self.P_mean, self.P_std, self.sigma_data = -1.2, 1.2, 0.5


@contextmanager
def nvlabs_modules():
    with pytest.MonkeyPatch.context() as mp:
        persistence = types.ModuleType("torch_utils.persistence")
        persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
        util = types.ModuleType("dnnlib.util")
        util.EasyDict = EasyDict
        torch_utils, dnnlib = types.ModuleType("torch_utils"), types.ModuleType("dnnlib")
        torch_utils.persistence, dnnlib.util = persistence, util
        for module in (torch_utils, persistence, dnnlib, util):
            mp.setitem(sys.modules, module.__name__, module)
        yield


class EDMPickler(pickle.Pickler):
    """Pickles as EDM's @persistent_class does: every non-torch module (and EDMLoss) becomes
    `_reconstruct_persistent_obj(meta)` with meta['state'] = its __dict__; torch containers (ModuleDict) pickle as usual."""

    def __init__(self, file, protocol, init_kwargs, module_src, extra_state):
        super().__init__(file, protocol)
        self.init_kwargs, self.module_src, self.extra_state = init_kwargs, module_src, extra_state

    def reducer_override(self, obj):
        persistent = isinstance(obj, EDMLoss) or (
            isinstance(obj, torch.nn.Module) and not type(obj).__module__.startswith("torch."))
        if not persistent:
            return NotImplemented
        top = type(obj).__name__ == "EDMPrecond"
        state = dict(obj.__dict__, _init_args=(), _init_kwargs=self.init_kwargs if top else {})
        if top:
            state.update(self.extra_state)
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=type(obj).__name__, state=state)
        return _reconstruct_persistent_obj, (meta,)


def write_edm_pickle(path, data, init_kwargs=None, protocol=EDM_PROTOCOL, extra_state=None):
    """Write `data` as EDM would; its module_src, if ever run, would create `<path>.ran`."""
    module_src = f"open({str(path) + '.ran'!r}, 'w').close()\n"
    with nvlabs_modules(), open(path, "wb") as f:
        EDMPickler(f, protocol, init_kwargs or {}, module_src, extra_state or {}).dump(data)
    assert not {"torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"} & set(sys.modules)
    return path


def snapshot(net):
    dataset_kwargs = EasyDict(class_name="training.dataset.ImageFolderDataset", path="datasets/cifar10-32x32.zip",
                              use_labels=False, xflip=False, cache=True, resolution=16, max_size=50000)
    return {"ema": net, "loss_fn": EDMLoss(), "augment_pipe": None, "dataset_kwargs": dataset_kwargs}


def tiny_network(name):
    """A fixture network with its weights, and its fixture inputs (x, σ, class_labels)."""
    net = build_edm_network(**TINY[name]["constructor_kwargs"]).eval()
    arrays = np.load(FIXTURES / f"{name}.npz")
    net.load_state_dict({k.removeprefix("param/"): torch.from_numpy(arrays[k])
                         for k in arrays.files if k.startswith("param/")}, strict=True)
    labels = torch.from_numpy(arrays["input/class_labels"]) if "input/class_labels" in arrays.files else None
    return net, (torch.from_numpy(arrays["input/x"]), torch.from_numpy(arrays["input/sigma"]), labels)


# ---- loading ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TINY))
def test_load_edm_reproduces_the_pickled_network(tmp_path, name):
    kwargs = TINY[name]["constructor_kwargs"]
    net, inputs = tiny_network(name)
    path = write_edm_pickle(tmp_path / "network-snapshot-000000.pkl", snapshot(net), kwargs)
    loaded = load_edm(path)
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    assert not Path(str(path) + ".ran").exists()
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.edm_init_kwargs == kwargs
    assert weights_digest(loaded) == weights_digest(net)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), net(*inputs))


def test_a_network_teacher_names_its_identity_and_solves_in_float32(tmp_path):
    from ctm.teachers import EDMTeacher
    name = sorted(TINY)[0]
    net, _ = tiny_network(name)
    teacher = EDMTeacher(load_edm(write_edm_pickle(tmp_path / "net.pkl", snapshot(net), TINY[name]["constructor_kwargs"])))
    identity = teacher.identity()
    assert identity["kind"] == "edm" and identity["digest"] == weights_digest(net)
    assert identity["image_shape"] == [net.img_channels, net.img_resolution, net.img_resolution]
    assert teacher.compute_dtype == torch.float32 and teacher.network_kwargs == teacher.net.init_kwargs


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_load_edm_reads_every_binary_protocol(tmp_path, protocol):
    net, _ = tiny_network("ddpmpp_tiny_uncond")
    path = write_edm_pickle(tmp_path / "net.pkl", {"ema": net}, TINY["ddpmpp_tiny_uncond"]["constructor_kwargs"],
                            protocol=protocol)
    loaded, expected = load_edm(path).state_dict(), net.state_dict()
    assert list(loaded) == list(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_load_edm_takes_the_requested_entry(tmp_path):
    net, inputs = tiny_network("ddpmpp_tiny_uncond")
    path = write_edm_pickle(tmp_path / "net.pkl", {"ema": None, "net": net},
                            TINY["ddpmpp_tiny_uncond"]["constructor_kwargs"])
    with torch.no_grad():
        assert torch.equal(load_edm(path, key="net")(*inputs), net(*inputs))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_read_edm_pickle_keeps_plain_data(tmp_path, protocol):
    data = {"skip_scale": np.sqrt(0.5), "f32": np.float32(0.1), "dtype": np.dtype("<f4"), "sigma_max": float("inf"),
            "hooks": OrderedDict(a=1), "set": {"x"}, "kwargs": EasyDict(use_fp16=True),
            "half": torch.arange(4, dtype=torch.float16)[1:], "dict": torch.nn.ModuleDict()}
    path = write_edm_pickle(tmp_path / "data.pkl", data, protocol=protocol)
    got = read_edm_pickle(path)
    assert type(got["skip_scale"]) is np.float64 and got["skip_scale"] == np.sqrt(0.5)
    assert type(got["f32"]) is np.float32 and got["f32"] == np.float32(0.1)
    assert got["dtype"] == np.dtype("<f4") and got["sigma_max"] == float("inf")
    assert type(got["hooks"]) is OrderedDict and got["hooks"] == {"a": 1}
    assert got["set"] == {"x"}
    assert type(got["kwargs"]) is dict and got["kwargs"] == {"use_fp16": True}
    assert got["half"].dtype == torch.float16 and torch.equal(got["half"], data["half"])
    assert isinstance(got["dict"], TorchModuleDict)
    assert got["dict"].state["_modules"] == {}


# ---- refusing what an EDM pickle never holds ----------------------------------------------------------------------

class RunsCode:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker):
    """Ways to create `marker` when unpickled, each with the global it names."""
    touch = f"open({str(marker)!r}, 'w').close()"
    return [(RunsCode(os.system, f"touch '{marker}'"), f"{os.system.__module__}.system"),
            (RunsCode(builtins.exec, touch), "builtins.exec"),
            (RunsCode(builtins.eval, touch), "builtins.eval"),
            (RunsCode(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen")]


@pytest.mark.parametrize("which", range(4), ids=["os.system", "exec", "eval", "Popen"])
def test_code_at_top_level_is_refused(tmp_path, which):
    marker = tmp_path / "ran"
    payload, name = payloads(marker)[which]
    path = write_edm_pickle(tmp_path / "evil.pkl", {"ema": payload})
    with pytest.raises(RefusedPickleError, match=f"refused global '{name}'"):
        load_edm(path)
    assert not marker.exists()
    ran = pickle.loads(path.read_bytes())["ema"]  # unrestricted, the same file does run its code
    if isinstance(ran, subprocess.Popen):
        ran.wait()
    assert marker.exists()


@pytest.mark.parametrize("which", range(4), ids=["os.system", "exec", "eval", "Popen"])
def test_code_inside_persistent_state_is_refused(tmp_path, which):
    marker = tmp_path / "ran"
    payload, name = payloads(marker)[which]
    net, _ = tiny_network("ddpmpp_tiny_uncond")
    kwargs = dict(TINY["ddpmpp_tiny_uncond"]["constructor_kwargs"], model_channels=payload)
    path = write_edm_pickle(tmp_path / "evil.pkl", snapshot(net), kwargs, extra_state={"skip_scale": payload})
    with pytest.raises(RefusedPickleError, match=f"refused global '{name}'"):
        load_edm(path)
    assert not marker.exists()


# ---- clear errors -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"img_resolution: 32\n", b"PK\x03\x04 a zip archive"])
def test_a_file_that_is_no_pickle_is_named(tmp_path, content):
    path = tmp_path / "edm.pkl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="could not be read as a pickle"):
        load_edm(path)


def test_a_missing_entry_lists_the_entries_present(tmp_path):
    path = write_edm_pickle(tmp_path / "net.pkl", {"augment_pipe": None, "dataset_kwargs": EasyDict()})
    with pytest.raises(ValueError, match=r"no entry 'ema'.*\['augment_pipe', 'dataset_kwargs'\]"):
        load_edm(path)


@pytest.mark.parametrize("data, found", [({"ema": EDMLoss()}, "EDMLoss"), ({"ema": {"a": 1}}, "dict"),
                                         ({"ema": torch.nn.ModuleDict()}, "torch.nn.ModuleDict"), ([1, 2], "list")])
def test_something_else_than_edm_precond_is_not_an_edm_network(tmp_path, data, found):
    path = write_edm_pickle(tmp_path / "net.pkl", data)
    with pytest.raises(ValueError, match=f"not an EDM network pickle.*{found}"):
        load_edm(path)


def test_constructor_arguments_the_network_does_not_take_are_named(tmp_path):
    net, _ = tiny_network("ddpmpp_tiny_uncond")
    kwargs = dict(TINY["ddpmpp_tiny_uncond"]["constructor_kwargs"], not_an_edm_argument=1)
    path = write_edm_pickle(tmp_path / "net.pkl", {"ema": net}, kwargs)
    with pytest.raises(ValueError, match="not supported by build_edm_network.*not_an_edm_argument"):
        load_edm(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_network_with_nan_or_inf_is_refused_naming_the_tensor(tmp_path, value):
    net, _ = tiny_network("ddpmpp_tiny_uncond")
    name, param = next(iter(net.named_parameters()))
    with torch.no_grad():
        param.view(-1)[3] = value
    path = write_edm_pickle(tmp_path / "net.pkl", snapshot(net), TINY["ddpmpp_tiny_uncond"]["constructor_kwargs"])
    with pytest.raises(TeacherError, match=rf"{path} \(entry 'ema'\): tensor '{name}' holds 1 of {param.numel()} "
                                           "values that are NaN or Inf"):
        load_edm(path)


def test_weights_that_do_not_fit_the_recorded_network_are_a_teacher_error(tmp_path):
    net, _ = tiny_network("ddpmpp_tiny_uncond")
    kwargs = dict(TINY["ddpmpp_tiny_uncond"]["constructor_kwargs"])
    kwargs["model_channels"] *= 2
    path = write_edm_pickle(tmp_path / "net.pkl", {"ema": net}, kwargs)
    with pytest.raises(TeacherError, match=rf"{path}: the weights of entry 'ema' do not fit the network .*mismatch"):
        load_edm(path)


def test_a_refused_pickle_is_a_teacher_error_that_the_stages_report_as_bad_input(tmp_path):
    payload, _ = payloads(tmp_path / "ran")[0]
    path = write_edm_pickle(tmp_path / "evil.pkl", {"ema": payload})
    with pytest.raises(TeacherError) as e:
        load_edm(path)
    assert isinstance(e.value, RefusedPickleError) and isinstance(e.value, (ValueError, pickle.UnpicklingError))


# ---- weights digest -----------------------------------------------------------------------------------------------

def test_weights_digest_is_sha256_over_keys_dtypes_shapes_and_bytes():
    linear = torch.nn.Linear(2, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -2.0]]))
        linear.bias.fill_(0.5)
    h = hashlib.sha256()
    h.update(b"weight torch.float32 (1, 2)\n" + np.array([1.0, -2.0], np.float32).tobytes())
    h.update(b"bias torch.float32 (1,)\n" + np.array([0.5], np.float32).tobytes())
    assert weights_digest(linear) == h.hexdigest()


def test_weights_digest_changes_with_any_weight_and_with_dtype():
    net, _ = tiny_network("adm_tiny_cond")
    digest = weights_digest(net)
    last = list(net.parameters())[-1]
    with torch.no_grad():
        last.view(-1)[-1] = torch.nextafter(last.view(-1)[-1], torch.tensor(np.inf))
    assert weights_digest(net) != digest
    with torch.no_grad():
        last.view(-1)[-1] = torch.nextafter(last.view(-1)[-1], torch.tensor(-np.inf))
    assert weights_digest(net) == digest
    assert weights_digest(net.double()) != digest
