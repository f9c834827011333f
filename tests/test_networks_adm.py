"""OpenAI's ADM UNetModel (`ADMUNet`): OpenAI's keys and shapes, and the official code's outputs weight for weight."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctm.networks import ADMUNet, EDMPrecond
from ctm.networks.adm import AttentionBlock
from ctm.teachers.adm import adm_kwargs

FIXTURES = Path(__file__).parent / "fixtures" / "adm"
NETWORKS = json.loads((FIXTURES / "networks.json").read_text())
TINY = NETWORKS["tiny_fixture"]["constructor_kwargs"]


def backbone_kwargs(kwargs):
    """ADMUNet arguments from EDMPrecond arguments."""
    skip = {"img_channels", "use_fp16", "sigma_data", "model_type", "sigma_min", "sigma_max"}
    return dict({k: v for k, v in kwargs.items() if k not in skip}, in_channels=kwargs["img_channels"],
                out_channels=kwargs["img_channels"])


def shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def fixture():
    """(the tiny CTM network's state dict, x, t, s, one-hot labels, outputs) of adm_tiny_cond.npz."""
    data = np.load(FIXTURES / "adm_tiny_cond.npz")
    state = {k.removeprefix("param/"): torch.from_numpy(data[k]).float() for k in data.files if k.startswith("param/")}
    x, t, s = (torch.from_numpy(data[f"input/{n}"]) for n in ("x", "t", "s"))
    labels = torch.nn.functional.one_hot(torch.from_numpy(data["input/class_labels"]), TINY["label_dim"]).float()
    outputs = {k.removeprefix("output/"): torch.from_numpy(data[k]) for k in data.files if k.startswith("output/")}
    return state, x, t, s, labels, outputs


def tiny(s_path, state):
    net = ADMUNet(**backbone_kwargs(TINY), s_path=s_path).eval()
    net.load_state_dict({k: v for k, v in state.items() if s_path or "_s." not in k}, strict=True)
    return net


def test_imagenet64_state_dict_is_openais_key_for_key():
    with torch.device("meta"):
        teacher = ADMUNet(**backbone_kwargs(adm_kwargs("imagenet64")))
        student = ADMUNet(**backbone_kwargs(adm_kwargs("imagenet64")), s_path=True)
    official = NETWORKS["imagenet64"]
    assert list(shapes(teacher).items()) == list(official["state_dict"].items())  # same keys, order and shapes
    assert sum(p.numel() for p in teacher.parameters()) == official["num_params"] == 295_899_267
    s_keys = {k: v for k, v in shapes(student).items() if k not in official["state_dict"]}
    assert s_keys == NETWORKS["imagenet64_ctm_s_path"]["state_dict"]
    assert sum(p.numel() for p in student.parameters()) == \
        NETWORKS["imagenet64_ctm_s_path"]["num_params"] == 324_100_611
    # A few shapes read off cm/unet.py: 4·192 embedding channels, 16 input and 16 output blocks, 1x1 Conv2d qkv.
    assert len(teacher.input_blocks) == len(teacher.output_blocks) == 16
    assert shapes(teacher)["label_emb.weight"] == [1000, 768]
    assert shapes(teacher)["middle_block.1.qkv.weight"] == [3 * 768, 768, 1, 1]
    assert shapes(teacher)["output_blocks.15.0.out_layers.3.weight"] == [192, 192, 3, 3]
    assert shapes(teacher)["out.2.weight"] == [3, 192, 3, 3]
    assert shapes(student)["output_blocks.15.0.emb_layers_s.1.weight"] == [2 * 192, 768]


def test_tiny_network_reproduces_the_official_outputs():
    state, x, t, s, labels, out = fixture()
    c_in = (1 / (t ** 2 + 0.25).sqrt()).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        F_teacher = tiny(False, state)(c_in * x, 250 * (t + 1e-44).log(), labels)
        F_student = tiny(True, state)(c_in * x, 250 * (t + 1e-44).log(), labels, noise_labels_s=250 * (s + 1e-44).log())
    torch.testing.assert_close(F_teacher, out["teacher_F"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(F_student, out["student_F"], rtol=1e-5, atol=1e-5)
    assert (F_teacher - F_student).abs().max() > 0.1


def test_tiny_network_matches_in_fp16_and_under_autocast():
    state, x, t, _, labels, out = fixture()
    net, c_noise = tiny(False, state), 250 * (t + 1e-44).log()
    x = x / (t ** 2 + 0.25).sqrt().reshape(-1, 1, 1, 1)
    with torch.no_grad():
        F_half = net(x.half(), c_noise, labels)  # EDM's use_fp16: fp16 torso, fp32 embeddings, norms and output layer
        with torch.autocast("cpu", dtype=torch.bfloat16):
            F_bf16 = net(x, c_noise, labels)
    assert F_half.dtype == torch.float32
    relative_error = lambda F: ((F.float() - out["teacher_F"]).norm() / out["teacher_F"].norm()).item()  # noqa: E731
    assert relative_error(F_half) < 1e-2 and relative_error(F_bf16) < 6e-2  # measured 3.5e-3 and 3.1e-2


def test_attention_reads_q_k_v_as_three_blocks_of_all_heads():
    """q = k = 0 makes attention uniform, so with v = the normalised input and an identity proj_out the block returns
    x + (pixel mean of the normalised x): exactly, if and only if the last C qkv channels are v for every head."""
    C = 64
    block = AttentionBlock(C, num_head_channels=16)
    with torch.no_grad():
        block.qkv.weight.zero_()
        block.qkv.bias.zero_()
        block.qkv.weight[2 * C:, :, 0, 0] = torch.eye(C)
        block.proj_out.weight.copy_(torch.eye(C)[:, :, None, None])
        block.proj_out.bias.zero_()
        x = torch.randn(2, C, 4, 4)
        normed = torch.nn.functional.group_norm(x, 32, eps=1e-5)
        torch.testing.assert_close(block(x), x + normed.mean(dim=(2, 3), keepdim=True), rtol=0, atol=1e-6)


def test_preconditioned_network_has_adm_noise_labels():
    net = EDMPrecond(**TINY).eval()
    sigma = torch.tensor([80.0, 1.0, 0.002])
    torch.testing.assert_close(net.c_noise(sigma), 250 * sigma.log())
    assert net.c_noise(torch.tensor(1.0)) == 0


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="multiples of 32"):
        ADMUNet(8, 3, 3, model_channels=48, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4])
    with pytest.raises(ValueError, match="heads of 24"):
        ADMUNet(8, 3, 3, model_channels=32, channel_mult=[1, 2], num_res_blocks=1, num_head_channels=24)
    net = ADMUNet(8, 3, 3, model_channels=32, channel_mult=[1], num_res_blocks=1, num_head_channels=16, s_path=True)
    with pytest.raises(ValueError, match="noise_labels_s"):
        net(torch.randn(1, 3, 8, 8), torch.zeros(1), None)
