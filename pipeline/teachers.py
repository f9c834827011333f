"""The teacher a config names, and its identity (what a trajectory cache's key records)."""

from pathlib import Path

from ctm.digits import fit_digits_teacher
from ctm.networks import ADMUNet
from ctm.teachers import ADM_PRESETS, EDMTeacher, GaussianMixtureTeacher, load_adm, load_edm
from pipeline.config import ConfigError


def build_teacher(cfg, device="cpu"):
    """A `denoise` teacher for `cfg.teacher`: the mixture (fitted to the digits when no path is given), an EDM pickle's
    network, or an OpenAI ADM state dict in the architecture preset that `teacher.key` names."""
    t = cfg.teacher
    if t.kind == "gmm":
        teacher = GaussianMixtureTeacher.load(t.path) if t.path else fit_digits_teacher(n_components=t.components)
        return teacher.to(device)
    if t.kind == "adm":
        if t.key not in ADM_PRESETS:
            raise ConfigError(f"config key 'teacher.key': an ADM teacher's key names its architecture preset, one of "
                              f"{sorted(ADM_PRESETS)}; got {t.key!r}")
        if not Path(t.path).is_file():
            raise FileNotFoundError(f"teacher.path: no ADM state dict at {t.path}; place e.g. consistency_models' "
                                    "edm_imagenet64_ema.pt there (it cannot be downloaded here)")
        return EDMTeacher(load_adm(t.path, preset=t.key).to(device), fast=t.fast)
    if not Path(t.path).is_file():
        raise FileNotFoundError(f"teacher.path: no EDM pickle at {t.path}; place e.g. edm-cifar10-32x32-uncond-vp.pkl "
                                "there (it cannot be downloaded here)")
    return EDMTeacher(load_edm(t.path, key=t.key).to(device), fast=t.fast)


def teacher_identity(teacher):
    """kind, weights digest, image shape and label count: the fields of a cache key that name the teacher."""
    if isinstance(teacher, GaussianMixtureTeacher):
        return {"kind": "gmm", "digest": teacher.digest(), "image_shape": list(teacher.image_shape), "label_dim": 0}
    net = teacher.net
    kind = "adm" if isinstance(net.model, ADMUNet) else "edm"
    return {"kind": kind, "digest": teacher.digest(), "label_dim": net.label_dim,
            "image_shape": [net.img_channels, net.img_resolution, net.img_resolution]}


def teacher_image_shape(teacher):
    return tuple(teacher_identity(teacher)["image_shape"])
