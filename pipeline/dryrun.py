"""The inputs of every stage, checked without Ray and without writing anything: what training reads
(pipeline.train.inputs), the evaluation's features, checkpoints and reference files. Every input that is missing or
unusable is named in one error.

    dry_run(cfg)                                   # every stage; lines describing what each will use
    check_evaluation_inputs(cfg, checkpoints)      # jobs.evaluate (jobs.train: train.trainer.check_training_inputs)
"""

import dataclasses
from pathlib import Path

from pipeline.cache import CacheError, open_cache
from pipeline.checkpoint import load_student
from pipeline.config import ConfigError
from pipeline.datasets import check_dataset
from pipeline.evaluation.features import check_features
from pipeline.teachers import build_teacher
from pipeline.train.inputs import Checks, InputError, training_inputs
from pipeline.train.teacher_start import needs_regression, teacher_start_source

__all__ = ["InputError", "check_evaluation_inputs", "dry_run", "evaluation_inputs"]


def _checkpoint(path, ema_rate):
    try:
        load_student(path, ema_rate=ema_rate)
    except KeyError as e:
        raise ConfigError(f"config key 'eval.ema_rate': {e.args[0]}") from None
    return f"checkpoint: {path}"


def _reference_stats(path):
    if not Path(path).is_file():
        raise FileNotFoundError(f"eval.reference_stats: no statistics file at {path}")
    return f"eval.reference_stats: {path}"


def _features(cfg):
    check_features(cfg)
    return f"eval: {cfg.eval.features} features" + (f" from {cfg.eval.inception_path}"
                                                     if cfg.eval.features == "inception" else "")


def evaluation_inputs(cfg, checks, checkpoints=()):
    """Check what evaluation reads into `checks`: the features, each checkpoint (readable, holding eval.ema_rate),
    reference statistics and the held-out likelihood images when configured."""
    checks.note(_features, cfg)
    for path in checkpoints:
        checks.note(_checkpoint, path, cfg.eval.ema_rate)
    if cfg.eval.reference_stats:
        checks.note(_reference_stats, cfg.eval.reference_stats)
    if cfg.eval.likelihood and cfg.eval.likelihood_path:
        checks(check_dataset, dataclasses.replace(cfg.data, path=cfg.eval.likelihood_path, max_images=None))


def check_evaluation_inputs(cfg, checkpoints):
    """Refuse, before Ray starts, an evaluation whose inputs are missing or unusable (every one named at once)."""
    checks = Checks()
    if cfg.eval.teacher_fid:
        checks(build_teacher, cfg)
    checks(check_dataset, cfg.data)
    evaluation_inputs(cfg, checks, checkpoints)
    checks.raise_errors()
    return checks.lines


def dry_run(cfg):
    """Lines describing what each stage will use; raises one error naming every input a stage would fail on."""
    checks = Checks()
    teacher, kwargs = training_inputs(cfg, checks)
    if kwargs is not None and needs_regression(cfg, teacher):
        checks.note(lambda: f"student start: {teacher_start_source(cfg, teacher, kwargs)}")
    evaluation_inputs(cfg, checks)
    checks.raise_errors()
    lines = checks.lines
    try:
        cache = open_cache(cfg.cache.root, cfg)
        lines.append(f"cache: {cache.url} holds {cache.num_records} of {cfg.cache.num_records} records")
    except CacheError as e:
        lines.append(f"cache: none yet under {cfg.cache.root} for this config; generate will build it "
                     f"({type(e).__name__})")
    return lines
