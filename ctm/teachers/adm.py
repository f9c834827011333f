"""Load OpenAI's ADM state dicts (openai/consistency_models releases, e.g. `edm_imagenet64_ema.pt`) as teachers.

Such a file is a plain `torch.save` of `UNetModel.state_dict()`, so it is read with `torch.load(weights_only=True)`,
which refuses, without running it, anything but tensors and plain containers. A state dict does not record its
architecture: the constructor arguments come from a named preset (the flags of the release) plus overrides. The network
is `EDMPrecond` around `ADMUNet`: EDM's c_skip, c_out, c_in with σ_data = 0.5 and c_noise = 250·ln(σ + 1e-44), as
consistency_models' `KarrasDenoiser.denoise` evaluates its EDM-trained networks.
"""

import pickle
import re
import zipfile

import torch

from ctm.networks.precond import EDMPrecond

from .edm import RefusedPickleError
from .errors import TeacherError, check_finite

ADM_PRESETS = {
    # consistency_models' EDM on ImageNet-64 (`scripts/launch.sh`: --image_size 64 --class_cond True --num_channels 192
    # --num_res_blocks 3 --attention_resolutions 32,16,8 --num_head_channels 64 --resblock_updown True
    # --use_scale_shift_norm True --dropout 0.1 --use_fp16 True): 295,899,267 parameters in 541 tensors.
    "imagenet64": dict(img_resolution=64, img_channels=3, label_dim=1000, use_fp16=True, sigma_data=0.5,
                       model_type="ADMUNet", model_channels=192, channel_mult=[1, 2, 3, 4], num_res_blocks=3,
                       attn_resolutions=[32, 16, 8], num_head_channels=64, dropout=0.1),
}


def adm_kwargs(preset, **overrides):
    """EDMPrecond arguments of an ADM preset, with `overrides` replacing some of them."""
    if preset not in ADM_PRESETS:
        raise ValueError(f"unknown ADM preset {preset!r}; choose one of {sorted(ADM_PRESETS)} (a state dict does not "
                         f"record its architecture, so the preset names it)")
    if overrides.get("model_type", "ADMUNet") != "ADMUNet":
        raise ValueError(f"an ADM state dict loads into model_type 'ADMUNet', not {overrides['model_type']!r}")
    return {**ADM_PRESETS[preset], **overrides}


def read_adm_state_dict(path):
    """The {key: tensor} dict a file holds, read without running anything in it; anything else is a clear error."""
    with open(path, "rb") as f:
        pickled = f.read(1) == b"\x80"  # the PROTO opcode every binary pickle starts with
    if not (pickled or zipfile.is_zipfile(path)):
        raise TeacherError(f"{path} is neither a torch.save zip archive nor a pickle; expected an ADM state dict such "
                           f"as consistency_models' edm_imagenet64_ema.pt")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL (\S+)", str(e))
        what = f"it names {named.group(1)}" if named else "it holds pickle instructions that torch.load does not read"
        hint = " A pickled torch.nn.Module must be re-saved as its state_dict()." if named and ".nn." in what else ""
        raise RefusedPickleError(f"{path}: refused by torch.load(weights_only=True): {what}, but an ADM state dict "
                                 f"holds only tensors under string keys, so this file is not one and may run code; "
                                 f"nothing in it was run.{hint}") from None
    except Exception as e:
        raise TeacherError(f"{path} could not be read by torch.load ({type(e).__name__}: {e}); expected an ADM state "
                           f"dict such as consistency_models' edm_imagenet64_ema.pt") from None
    if not isinstance(data, dict):
        raise TeacherError(f"{path}: not an ADM state dict: it holds a {type(data).__name__}, expected a dict of "
                           "tensors")
    others = sorted(str(k) for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if others:
        raise TeacherError(f"{path}: not an ADM state dict: entries {others[:8]}{' ...' if len(others) > 8 else ''} "
                           f"are not tensors (a training checkpoint keeps the network's state dict under one entry; "
                           f"save that entry alone)")
    return data


def _keys(keys, limit=8):
    keys = sorted(keys)
    return f"{len(keys)} {keys[:limit]}{' ...' if len(keys) > limit else ''}"


def check_adm_state_dict(path, state_dict, net, preset):
    """Raise, naming the file and the keys, if `state_dict` does not fit `net` (an ADMUNet) key for key and shape."""
    expected = net.state_dict()
    missing, unexpected = expected.keys() - state_dict.keys(), state_dict.keys() - expected.keys()
    if missing or unexpected:
        s_path = any("time_embed_s." in k or "emb_layers_s." in k for k in unexpected)
        hint = (" Its s-path keys (time_embed_s, emb_layers_s) make it a CTM student checkpoint, not a teacher."
                if s_path else f" Check the preset {preset!r} and its overrides against the network's training flags.")
        raise TeacherError(f"{path}: not an ADM state dict of preset {preset!r}: missing keys {_keys(missing)}, "
                           f"unexpected keys {_keys(unexpected)}.{hint}")
    wrong = {k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in state_dict.items()
             if v.shape != expected[k].shape}
    if wrong:
        listed = "; ".join(f"{k}: file {a}, preset {b}" for k, (a, b) in sorted(wrong.items())[:8])
        hint = (" 3-D qkv weights are guided-diffusion's Conv1d attention (heads-first q, k, v layout), which this "
                "loader does not read." if any(k.endswith("qkv.weight") and len(a) == 3 for k, (a, _) in wrong.items())
                else "")
        raise TeacherError(f"{path}: {len(wrong)} tensors differ in shape from preset {preset!r}: {listed}.{hint}")


def load_adm(path, preset="imagenet64", **overrides):
    """The EDMPrecond (ADMUNet backbone) holding the ADM state dict in `path`: eval mode, frozen.

    `preset` names the architecture (see ADM_PRESETS); `overrides` replace some of its EDMPrecond arguments.
    """
    state_dict = read_adm_state_dict(path)
    net = EDMPrecond(**adm_kwargs(preset, **overrides))
    check_adm_state_dict(path, state_dict, net.model, preset)
    check_finite(state_dict, str(path))
    net.model.load_state_dict(state_dict, strict=True)
    return net.eval().requires_grad_(False)
