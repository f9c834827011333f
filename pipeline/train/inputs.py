"""What training reads, checked without Ray and without writing anything: the teacher, its student, the dataset, each
weights file and train.init_checkpoint. Each check runs even after another failed, so one error names every input that
is missing or unusable (a user placing weights files learns of all of them at once).
"""

from pathlib import Path

from ctm.discriminator import TIMM_WEIGHTS, TORCHVISION_WEIGHT_FILES
from pipeline.checkpoint import load_checkpoint
from pipeline.config import ConfigError
from pipeline.datasets import check_dataset
from pipeline.teachers import build_teacher, check_images_fit_teacher, teacher_identity
from pipeline.train.state import student_kwargs


class InputError(ValueError):
    """Several inputs of a stage are missing or unusable; `errors` holds each one's error, the message all of them."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__(f"{len(self.errors)} inputs cannot be used: " + "; ".join(
            f"({i}) {type(e).__name__}: {' '.join(str(e).split())}" for i, e in enumerate(self.errors, 1)))


class Checks:
    """Runs checks, keeping every failure: `lines` says what was found, `errors` what was not."""

    def __init__(self):
        self.lines, self.errors = [], []

    def __call__(self, check, *args):
        """check(*args), or None when it raised a bad-input error (kept in `errors`)."""
        try:
            return check(*args)
        except (ValueError, FileNotFoundError) as e:
            self.errors += e.errors if isinstance(e, InputError) else [e]
            return None

    def note(self, check, *args):
        """check(*args), which returns a line saying what it found, kept in `lines`."""
        line = self(check, *args)
        if line is not None:
            self.lines.append(line)
        return line

    def raise_errors(self):
        """Raise the one error found as itself, several as one InputError; nothing when every check passed."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise InputError(self.errors)


def need_file(path, key, what):
    """'key: path' for a weights file that is there; FileNotFoundError naming the key and the file otherwise."""
    if not path:
        raise FileNotFoundError(f"{key} is not set: it names the local file of {what}; set it (nothing can be "
                                "downloaded here)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}: {what} not found at {path!r}; place it there (it cannot be downloaded here)")
    return f"{key}: {path}"


def weights_files(cfg):
    """(path, key, what) of each weights file training reads: LPIPS's two, the discriminator's feature networks."""
    t, files = cfg.train, []
    if t.distance == "lpips":
        files += [(t.lpips_vgg_path, "train.lpips_vgg_path", "torchvision's vgg16-397923af.pth"),
                  (t.lpips_lin_path, "train.lpips_lin_path", "the lpips package's vgg.pth")]
    if t.gan_start is not None:
        for arch in (a for a in t.discriminator.split("+") if a not in ("tiny", "pixels")):
            what = (f"torchvision's {TORCHVISION_WEIGHT_FILES[arch]}" if arch in TORCHVISION_WEIGHT_FILES else
                    f"model.safetensors of {TIMM_WEIGHTS[arch]}" if arch in TIMM_WEIGHTS else f"the {arch} weights")
            files.append((t.discriminator_weights.get(arch), f"train.discriminator_weights.{arch}", what))
    return files


def check_init_checkpoint(cfg, kwargs):
    """train.init_checkpoint: readable, holding the EMA that train.init_target names and (kwargs given) a student of
    this config's architecture. A URL is left to the workers, which download it."""
    t = cfg.train
    if "://" in t.init_checkpoint:
        return f"train.init_checkpoint: {t.init_checkpoint} (read by the workers)"
    try:
        parts = load_checkpoint(t.init_checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"train.init_checkpoint: {e}") from None
    rate = t.init_target.removeprefix("ema_")
    if t.init_target != "target" and rate not in parts["ema"]:
        raise ConfigError(f"config key 'train.init_target': {t.init_checkpoint} holds EMAs at rates "
                          f"{sorted(parts['ema'])} only, not {rate}; choose one of those, or init_target=target")
    ours, theirs = ({k: v for k, v in kw.items() if k != "dropout"} for kw in (kwargs or {}, parts["student_kwargs"]))
    if kwargs is not None and ours != theirs:
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        raise ConfigError(f"config key 'train.init_checkpoint': its student differs from this config's in {differ}; "
                          "match student.* (and the teacher) to the run that wrote it")
    return f"train.init_checkpoint: {t.init_checkpoint} (step {int(parts['step'])})"


def _teacher(cfg):
    teacher = build_teacher(cfg)
    identity = teacher_identity(teacher)
    return teacher, (f"teacher: {identity['kind']} {cfg.teacher.path or '(fitted to the digits)'}, images "
                     f"{tuple(identity['image_shape'])}, {identity['label_dim']} labels, digest "
                     f"{identity['digest'][:16]}")


def _dataset(data_cfg):
    data = check_dataset(data_cfg)
    count = data["num_images"] if data["num_images"] is not None else "unknown number of"
    return data, f"data: {data['name']} {data_cfg.path or ''} images {tuple(data['image_shape'])}, {count} images"


def _student(cfg, teacher, data):
    kwargs = student_kwargs(cfg, teacher)
    if kwargs["label_dim"] and not cfg.data.use_labels:
        raise ConfigError(f"config key 'data.use_labels': the student is class-conditional ({kwargs['label_dim']} "
                          "labels, like its teacher); set data.use_labels=true")
    if data is not None:
        check_images_fit_teacher(teacher_identity(teacher), cfg.data, data["image_shape"])
    return kwargs, (f"student: {kwargs['model_type']} {kwargs.get('model_channels')} channels, {kwargs['label_dim']} "
                    "labels")


def _described(checks, check, *args):
    """check(*args) returns (value, line): the value, its line kept in `checks.lines`; None when the check failed."""
    found = checks(check, *args)
    if found is None:
        return None
    checks.lines.append(found[1])
    return found[0]


def training_inputs(cfg, checks, dataset=True):
    """Check what training reads into `checks`: the teacher, the student it gives, the dataset (dataset=True; cached
    training reads its images from the cache), the weights files and train.init_checkpoint. Returns (teacher,
    student kwargs), None where they could not be had."""
    teacher = _described(checks, _teacher, cfg)
    data = _described(checks, _dataset, cfg.data) if dataset else None
    kwargs = None if teacher is None else _described(checks, _student, cfg, teacher, data)
    for path, key, what in weights_files(cfg):
        checks.note(need_file, path, key, what)
    if cfg.train.init_checkpoint:
        checks.note(check_init_checkpoint, cfg, kwargs)
    return teacher, kwargs
