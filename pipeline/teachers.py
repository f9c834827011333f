"""The teacher a config names, and its identity (what a trajectory cache's key records)."""

import os
from pathlib import Path

from ctm.digits import fit_digits_teacher
from ctm.teachers import ADM_PRESETS, EDMTeacher, GaussianMixtureTeacher, TeacherError, load_adm, load_edm
from pipeline.config import ConfigError
from pipeline.memo import remembered

MISSING = {  # what a teacher.path that is not there should hold, and what to do
    "gmm": ("Gaussian-mixture .npz", "save one with GaussianMixtureTeacher.save, or set teacher.path=null to fit the "
                                     "mixture to the digits"),
    "edm": ("EDM pickle", "place e.g. edm-cifar10-32x32-uncond-vp.pkl there (it cannot be downloaded here)"),
    "adm": ("ADM state dict", "place e.g. consistency_models' edm_imagenet64_ema.pt there (it cannot be downloaded "
                              "here)"),
}


def build_teacher(cfg, device="cpu"):
    """A `denoise` teacher for `cfg.teacher`: the mixture (fitted to the digits when no path is given), an EDM pickle's
    network, or an OpenAI ADM state dict in the architecture preset that `teacher.key` names.

    A missing file raises FileNotFoundError, a file that is no such teacher (unreadable, refused, holding NaN or Inf)
    TeacherError; both name the key teacher.path and the file."""
    t = cfg.teacher
    if t.kind == "adm" and t.key not in ADM_PRESETS:
        raise ConfigError(f"config key 'teacher.key': an ADM teacher's key names its architecture preset, one of "
                          f"{sorted(ADM_PRESETS)}; got {t.key!r}")
    if t.path and not Path(t.path).is_file():
        what, hint = MISSING[t.kind]
        raise FileNotFoundError(f"teacher.path: no {what} at {t.path}; {hint}")
    try:
        if t.kind == "gmm":
            teacher = GaussianMixtureTeacher.load(t.path) if t.path else fit_digits_teacher(n_components=t.components)
            return teacher.to(device)
        net = load_adm(t.path, preset=t.key) if t.kind == "adm" else load_edm(t.path, key=t.key)
    except TeacherError as e:
        raise type(e)(f"teacher.path: {e}") from None
    return EDMTeacher(net.to(device), fast=t.fast, kind=t.kind)


def configured_teacher_identity(cfg):
    """The identity (`Teacher.identity`) of the teacher `cfg` names, built (on the CPU) only the first time this
    machine sees its file: remembered by the file's path, size and modification time (`pipeline.memo`). The mixture
    fitted to the digits (no teacher.path) is fitted here, since its fit is what its identity names."""
    t = cfg.teacher
    if not t.path or not Path(t.path).is_file():
        return build_teacher(cfg).identity()  # the fit, or the error naming the missing file
    stat = os.stat(t.path)
    stamp = {"teacher": t.kind, "key": t.key, "path": os.path.realpath(t.path), "size": stat.st_size,
             "mtime_ns": stat.st_mtime_ns}
    return remembered(stamp, lambda: build_teacher(cfg).identity())


def teacher_image_shape(teacher):
    return tuple(teacher.identity()["image_shape"])


def check_images_fit_teacher(teacher_id, data_cfg, image_shape, labels=None):
    """Refuse data the teacher cannot take: images of another shape than its own or, when a conditional teacher is
    given labels (data.use_labels), a class index outside its label_dim. The one check of every stage that pairs the
    data with the teacher."""
    if tuple(image_shape) != tuple(teacher_id["image_shape"]):
        raise ConfigError(f"config keys 'data.name' and 'teacher.path': {data_cfg.name} images are "
                          f"{tuple(image_shape)}, the teacher's are {tuple(teacher_id['image_shape'])}; pair the "
                          "teacher with data of its image size")
    label_dim = teacher_id["label_dim"]
    if label_dim and data_cfg.use_labels and labels is not None and len(labels) \
            and not 0 <= labels.min() <= labels.max() < label_dim:
        raise ConfigError(f"config key 'data.use_labels': labels {labels.min()}..{labels.max()} do not fit the "
                          f"teacher's {label_dim} classes")
