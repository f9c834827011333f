"""A dry run: resolve a config and check every path and shape the stages will need, without running any of them."""

from pathlib import Path

from ctm.discriminator import TIMM_WEIGHTS, TORCHVISION_WEIGHT_FILES
from pipeline.cache import CacheError, open_cache
from pipeline.config import ConfigError
from pipeline.datasets import check_dataset
from pipeline.evaluation.features import check_features
from pipeline.teachers import build_teacher, teacher_identity
from pipeline.train.state import student_kwargs
from pipeline.train.teacher_start import needs_regression, teacher_start_source


def _need_file(path, key, what):
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"{key}: {what} not found at {path!r}; place it there (it cannot be downloaded here)")
    return f"{key}: {path}"


def dry_run(cfg):
    """Lines describing what each stage will use; raises the first error a stage would meet."""
    teacher = build_teacher(cfg)
    identity = teacher_identity(teacher)
    lines = [f"teacher: {identity['kind']} {cfg.teacher.path or '(fitted to the digits)'}, images "
             f"{tuple(identity['image_shape'])}, {identity['label_dim']} labels, digest {identity['digest'][:16]}"]
    data = check_dataset(cfg.data)
    if tuple(data["image_shape"]) != tuple(identity["image_shape"]):
        raise ConfigError(f"config key 'data.name': {data['name']} images are {tuple(data['image_shape'])}, the "
                          f"teacher's are {tuple(identity['image_shape'])}")
    lines.append(f"data: {data['name']} {cfg.data.path or ''} images {tuple(data['image_shape'])}, "
                 f"{data['num_images'] if data['num_images'] is not None else 'unknown number of'} images")
    kwargs = student_kwargs(cfg, teacher)
    lines.append(f"student: {kwargs['model_type']} {kwargs.get('model_channels')} channels, "
                 f"{kwargs['label_dim']} labels")
    if needs_regression(cfg, teacher):
        lines.append(f"student start: {teacher_start_source(cfg, teacher, kwargs)}")
    t = cfg.train
    if t.distance == "lpips":
        lines += [_need_file(t.lpips_vgg_path, "train.lpips_vgg_path", "torchvision's vgg16-397923af.pth"),
                  _need_file(t.lpips_lin_path, "train.lpips_lin_path", "the lpips package's vgg.pth")]
    if t.gan_start is not None:
        for arch in (a for a in t.discriminator.split("+") if a not in ("tiny", "pixels")):
            what = (f"torchvision's {TORCHVISION_WEIGHT_FILES[arch]}" if arch in TORCHVISION_WEIGHT_FILES else
                    f"model.safetensors of {TIMM_WEIGHTS[arch]}" if arch in TIMM_WEIGHTS else f"the {arch} weights")
            lines.append(_need_file(t.discriminator_weights.get(arch), f"train.discriminator_weights.{arch}", what))
    check_features(cfg)
    lines.append(f"eval: {cfg.eval.features} features" +
                 (f" from {cfg.eval.inception_path}" if cfg.eval.features == "inception" else ""))
    try:
        cache = open_cache(cfg.cache.root, cfg)
        lines.append(f"cache: {cache.url} holds {cache.num_records} of {cfg.cache.num_records} records")
    except CacheError as e:
        lines.append(f"cache: none yet under {cfg.cache.root} for this config; generate will build it "
                     f"({type(e).__name__})")
    return lines
