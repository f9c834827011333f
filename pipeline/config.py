"""One typed configuration for every stage: YAML, overridden by dotted `--set key=value`, validated before any work.

An unknown key, a wrong type or an impossible value stops the run with a message that names the key.
"""

import copy
import dataclasses
import importlib.util
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ctm.schedule import Grid


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what to do."""


@dataclass
class TeacherConfig:
    kind: str = "gmm"                 # "gmm" (Gaussian mixture .npz) | "edm" (NVlabs EDM pickle) | "adm" (OpenAI ADM .pt)
    path: str | None = None           # gmm: .npz (None = fit to the digits); edm: the .pkl; adm: the .pt
    key: str = "ema"                  # edm: entry of the pickle; adm: architecture preset (ctm.teachers.ADM_PRESETS)
    components: int = 10              # gmm fitted when path is None
    fast: bool = True                 # bf16 autocast + channels_last + torch.compile on CUDA


@dataclass
class DataConfig:
    name: str = "digits"              # digits | cifar10 | imagenet64 | folder
    path: str | None = None           # archive, .npz or folder for everything but digits
    resolution: int | None = None     # image size for folder/imagenet64 folders (None = as stored; imagenet64 64)
    hflip: bool = True                # flips with probability 0.5 (official on cifar10, imagenet64); never on digits
    use_labels: bool = False          # pass class labels to a conditional teacher and student
    max_images: int | None = None     # a fixed random subset of this many images (None = all)
    storage_options: dict = field(default_factory=dict)  # fsspec options when data.path is a URL (s3://, gs://)


@dataclass
class GridConfig:
    N: int = 18                       # grid points, 80 → 0.002 (CIFAR-10 18, ImageNet-64 40)
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    K: int | None = None              # largest number of teacher steps k (None = N − 1)

    def grid(self):
        """The `ctm.schedule.Grid` every stage takes (its K resolved: N − 1 when None)."""
        return Grid(self.N, self.sigma_min, self.sigma_max, self.rho, self.K)


@dataclass
class CacheConfig:
    root: str = "runs/cache"          # a local folder or an fsspec URL (s3://bucket/prefix, gs://, file://)
    storage_options: dict = field(default_factory=dict)  # passed to fsspec (endpoint_url, key, secret ...)
    mode: str = "data"                # "data": x_t = x0 + t_n z from real data; "noise": n = 0, data-free
    num_records: int = 4096
    records_per_shard: int = 512
    dtype: str = "float16"            # float16 | float32 storage of the states
    seed: int = 0
    batch_size: int = 256             # teacher batch per actor call
    num_actors: int = 1               # teacher actors (one GPU each when GPUs are present)
    gpus_per_actor: float = 1.0       # used only when the cluster has GPUs
    cpus_per_actor: float = 1.0       # CPUs reserved by each teacher actor (its torch threads on a CPU cluster)


@dataclass
class StudentConfig:
    architecture: str | None = None   # "teacher": the teacher's EDM network plus the s-path; "tiny": small DDPM++
                                      # (None: "teacher" for EDM and ADM teachers, "tiny" for the mixture)
    init_from_teacher: bool = True    # start as the teacher: copy its weights (EDM, ADM), or regress onto its exact
                                      # denoiser (mixture; cached under <cache.root>/teacher-start/)
    init_steps: int = 2000            # mixture teacher: regression steps (cosine learning-rate decay to 0)
    init_batch_size: int = 128
    init_lr: float = 2e-3
    dropout: float | None = None      # None keeps the architecture's own (DDPM++ 0.13)
    channels: int | None = None       # tiny: the DDPM++'s model_channels (None: 16)


@dataclass
class TrainConfig:
    teacher_mode: str = "cached"      # "cached" (read the trajectory cache) | "online" (Heun inside the step)
    steps: int = 1000                 # optimiser steps, G and D steps counted together as the official code does
    batch_size: int = 64              # global batch per step
    micro_batch: int | None = None    # per-worker micro-batch (None = whole share); sums of micro-batch means
    lr: float = 4e-4
    lr_schedule: str = "constant"    # constant (official) | cosine: lr·½(1 + cos(π·step/decay)), for short runs
    lr_decay_steps: int | None = None # the cosine's length (None = train.steps)
    lr_d: float = 2e-3
    betas_d: tuple = (0.5, 0.9)
    target_ema: float = 0.999         # μ of θ⁻
    ema_rates: tuple = (0.999, 0.9999)
    distance: str = "lpips"           # lpips | pseudo_huber | l2
    lpips_vgg_path: str | None = None
    lpips_lin_path: str | None = None
    lambda_dsm: float | None = None   # None = adaptive (clamp [0, 1e4]); a number fixes it
    lambda_gan: float | None = None   # None = adaptive (clip [0.01, 10]); a number fixes it
    gan_start: int | None = None      # step at which the GAN stage starts (None = no GAN)
    gan_warmup: int = 0               # first steps of the GAN stage: D trains, G's loss has no GAN term yet (official 0)
    discriminator: str = "tiny"       # tiny | tf_efficientnet_lite0+deit_base_distilled_patch16_224 (official) | efficientnet_b0+vit_b_16
    discriminator_weights: dict = field(default_factory=dict)
    diffaug: str = "color,translation,cutout"  # DiffAugment of D's real and fake inputs (official); "" = none
    num_workers: int = 1
    gpus_per_worker: float = 1.0      # used only when the cluster has GPUs
    cpus_per_worker: float = 1.0
    storage_path: str = "runs/train"  # local folder or fsspec URL shared by the cluster
    storage_options: dict = field(default_factory=dict)  # fsspec options when storage_path is a URL (endpoint_url ...)
    run_name: str = "ctm"
    init_checkpoint: str | None = None  # start from another run's checkpoint (e.g. GAN stage from CTM+DSM)
    init_target: str = "target"       # θ⁻ at init_checkpoint: its "target", or "ema_<rate>" (official: ema_0.999)
    queue_steps: int = 4              # cached mode: rows of each k queued, in shares of a step (more: fewer dropped)
    checkpoint_every: int = 200
    num_to_keep: int = 3
    max_failures: int = 3
    log_every: int = 20
    tensorboard: bool = True          # rank 0 writes TensorBoard event files into <run>/tensorboard
    mlflow: dict | None = None        # {tracking_uri: ..., experiment: ...} logs to MLflow (extra [mlflow]); null: off
    wandb: dict | None = None         # {project: ..., mode: offline} logs to W&B (extra [wandb]); null: off
    seed: int = 0


@dataclass
class EvalConfig:
    nfe: tuple = (1, 2, 4, 8)
    gammas: tuple = (0.0, 1.0)
    num_samples: int = 1000
    features: str = "digits"          # "digits": the shipped digits classifier; "inception": clean-fid Inception
    inception_path: str | None = None # local inception-2015-12-05.pt
    reference_stats: str | None = None  # .npz with mu, sigma of the reference set (else computed from the data)
    num_actors: int = 1
    gpus_per_actor: float = 0.25
    ema_rate: float = 0.999             # which weights are scored: an EMA of train.ema_rates, or 0 (the online weights)
    likelihood: bool = False
    out: str = "runs/eval"
    two_step: tuple = ()              # [i1, i2] grid-index pairs of the 2-step sampler, scored beside eval.nfe × gammas
    teacher_fid: bool = False         # also score the teacher's own Heun samples on the full N-point grid
    batch_size: int = 250             # sampling and feature batch
    seed: int = 0                     # latents are shared by every setting of one evaluation
    repeats: int = 1                  # latent draws per setting (seeds eval.seed, eval.seed + 1, ...); FID: their mean
    cpus_per_actor: float = 1.0
    reference_cache: str | None = None  # where reference statistics are cached (None = <eval.out>/references)
    likelihood_samples: int = 64      # images scored for NLL (bits/dim, Hutchinson)
    likelihood_path: str | None = None  # held-out images of the same dataset kind (None = a subset of data.path)
    schedule_nfe: tuple = (1, 2, 3, 4, 6, 8)      # the schedule sweep (jobs.evaluate --schedule-sweep): NFE × γ
    schedule_gammas: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)  # on finished checkpoints, no training
    schedule_two_step: tuple = ()     # [i1, i2] pairs scored beside schedule_nfe × schedule_gammas

    def seeds(self):
        """The latent seeds of each setting's draws: FID, real against real and the teacher's FID are their means
        (at 1,797 digits one draw's FID moves by a fifth between seeds; docs/benchmarks.md)."""
        return list(range(self.seed, self.seed + self.repeats))


@dataclass
class SweepConfig:
    name: str = "sweep"
    storage_path: str = "runs/sweep"
    num_samples: int = 4
    max_concurrent_trials: int = 2
    search_space: dict = field(default_factory=dict)   # {"train.lambda_dsm": {"loguniform": [0.1, 10]}, ...}
    grace_period: int = 1
    reduction_factor: int = 2
    report_every: int = 200
    storage_options: dict = field(default_factory=dict)  # fsspec options when storage_path is a URL
    nfe: int = 1                      # the sampling setting whose FID ASHA reads: γ-sampling at (nfe, gamma)
    gamma: float = 0.0
    seed: int = 0                     # random draws of the search space
    cpus_per_trial: float = 1.0       # each trial's driver (its Train workers reserve train.cpus_per_worker)
    max_failures: int = 1             # retries of a failed trial from its last report (-1: forever)
    schedule_trials: int = 0          # > 0: score each report by the best of this many schedules at sweep.nfe (0: off)


@dataclass
class Config:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def to_dict(self):
        return dataclasses.asdict(self)

    def dump(self):
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _coerce(value, annotation, key):
    """Check (and gently convert) one value against its annotation; raise ConfigError naming the key."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if annotation is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads 1e-4 as a string
        except ValueError:
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}") from None
    if annotation is tuple or origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
    if annotation in (int, str, bool, dict) and isinstance(value, annotation) \
            and not (annotation is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config key '{key}' must be {getattr(annotation, '__name__', annotation)}, got {value!r}")


def _build(cls, values, prefix):
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.')}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; known keys in this section: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def _set_dotted(tree, dotted, value):
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{dotted}': '{p}' is not a section")
    node[leaf] = value


def _yaml_problem(error):
    """Where and what a YAML parse error is, on one line: 'line 3, column 7: mapping values are not allowed here'."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None) or str(error)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def parse_override(text):
    """'train.lr=1e-4' -> ('train.lr', 1e-4); the value is read as YAML (numbers, lists, null, true)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({_yaml_problem(e)}); quote text that "
                          "holds ':' or '#', and write lists as [a, b] and mappings as {key: value}") from None


def _read_yaml(path):
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML at {_yaml_problem(e)}; fix the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(loaded or {}, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return loaded or {}


EMBEDDED_DEFAULT = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "digits.yaml"


def load_config(path=None, overrides=(), base=None):
    """A validated Config from `base` (a config dict) and/or a YAML file, then dotted overrides.

    Keys that neither gives take the dataclass defaults above, which are the official hyperparameters; the embedded
    digits default run is the file EMBEDDED_DEFAULT.
    """
    tree = _renamed_keys_moved(base or {})  # a checkpoint's stored config may predate a rename
    if path is not None:
        tree = _merge(tree, _refuse_renamed_keys(_read_yaml(Path(path)), f"the config file {path}"))
    tree = copy.deepcopy(tree)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        _set_dotted(tree, key, value)
    cfg = _build(Config, _refuse_renamed_keys(tree, "--set"), "")
    if cfg.student.architecture is None:
        cfg.student.architecture = "tiny" if cfg.teacher.kind == "gmm" else "teacher"
    validate(cfg)
    return cfg


RENAMED = {"eval.sweep_nfe": "eval.schedule_nfe", "eval.sweep_gammas": "eval.schedule_gammas",
           "eval.sweep_two_step": "eval.schedule_two_step"}  # old key: new key
REMOVED = ("train.fail_at_step",)  # keys that older stored configs may hold (faults are now injected by tests)


def _renamed_present(tree):
    """(old, new) of each renamed key that `tree` holds."""
    def holds(key):
        section, name = key.split(".")
        return isinstance(tree.get(section), dict) and name in tree[section]
    return [(old, new) for old, new in RENAMED.items() if holds(old)]


def _refuse_renamed_keys(tree, where):
    """`tree`, or a ConfigError naming the new name of every renamed key that a user's file or --set still uses."""
    present = _renamed_present(tree)
    if present:
        renames = ", ".join(f"config key '{old}' is now '{new}'" for old, new in present)
        raise ConfigError(f"{renames}; rename {'it' if len(present) == 1 else 'them'} in {where}")
    return tree


def _renamed_keys_moved(tree):
    """A copy of a stored config dict with each renamed key under its new name and each removed key dropped."""
    tree = copy.deepcopy(dict(tree))
    for key in REMOVED:
        section, name = key.split(".")
        if isinstance(tree.get(section), dict):
            tree[section].pop(name, None)
    for old, new in _renamed_present(tree):
        (section, name), (_, new_name) = old.split("."), new.split(".")
        tree[section][new_name] = tree[section].pop(name)
    return tree


def _merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _interval(low, high, low_open, high_open):
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return f"{'>' if low_open else '>='} {low}" if low is not None else f"{'<' if high_open else '<='} {high}"


def _number(key, value, low=None, high=None, low_open=False, high_open=False, integer=False, entry=""):
    """Refuse, naming the key, a value that is not a finite number (an integer when `integer`) within the bounds."""
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value) \
        and (low is None or (value > low if low_open else value >= low)) \
        and (high is None or (value < high if high_open else value <= high))
    if not ok:
        what = "an integer" if integer else "a finite number"
        raise ConfigError(f"config key '{key}': {entry}must be {what} {_interval(low, high, low_open, high_open)}, "
                          f"got {value!r}")


def _numbers(key, values, **bounds):
    for v in values:
        _number(key, v, entry="every entry ", **bounds)


def _count(key, value, low=1):
    _number(key, value, low=low, integer=True)


def _optional(check, key, value, **bounds):
    if value is not None:
        check(key, value, **bounds)


def _gpus(key, value):
    _number(key, value, low=0, low_open=True)
    if value > 1 and value != int(value):
        raise ConfigError(f"config key '{key}': Ray takes a fraction of one GPU (<= 1) or whole GPUs, got {value}")


def validate(cfg):
    """Impossible values, named by key: every number is finite and in its range, every choice one of its options, and
    the sections agree with each other."""
    def need(cond, key, msg):
        if not cond:
            raise ConfigError(f"config key '{key}': {msg}")
    need(cfg.teacher.kind in ("gmm", "edm", "adm"), "teacher.kind",
         f"must be 'gmm', 'edm' or 'adm', got {cfg.teacher.kind!r}")
    need(cfg.teacher.kind == "gmm" or cfg.teacher.path, "teacher.path",
         f"an {cfg.teacher.kind.upper()} teacher needs the path of its {'.pkl' if cfg.teacher.kind == 'edm' else '.pt'}")
    _count("teacher.components", cfg.teacher.components)
    g = cfg.grid
    _count("grid.N", g.N, low=2)
    _number("grid.sigma_min", g.sigma_min, low=0, low_open=True)
    _number("grid.sigma_max", g.sigma_max, low=0, low_open=True)
    need(g.sigma_min < g.sigma_max, "grid.sigma_min",
         f"need 0 < sigma_min < sigma_max, got {g.sigma_min} and {g.sigma_max}")
    _number("grid.rho", g.rho, low=0, low_open=True)  # the Karras ramp raises to 1/ρ (EDM eq. 5)
    _optional(_count, "grid.K", g.K)
    need(g.K is None or 1 <= g.K <= g.N - 1, "grid.K", f"need 1 <= K <= N-1 = {g.N - 1}, got {g.K}")
    need(cfg.data.name in ("digits", "cifar10", "imagenet64", "folder"), "data.name",
         f"must be digits, cifar10, imagenet64 or folder, got {cfg.data.name!r}")
    need(cfg.data.name == "digits" or cfg.data.path, "data.path", f"dataset {cfg.data.name!r} needs a path")
    _optional(_count, "data.resolution", cfg.data.resolution)
    need(cfg.data.resolution is None or cfg.data.name in ("folder", "imagenet64"), "data.resolution",
         "only folder and imagenet64 images are resized (digits are 8x8, cifar10 32x32); set it to null")
    _optional(_count, "data.max_images", cfg.data.max_images)
    c = cfg.cache
    need(c.mode in ("data", "noise"), "cache.mode", f"must be 'data' or 'noise', got {c.mode!r}")
    need(c.dtype in ("float16", "float32"), "cache.dtype", f"must be float16 or float32, got {c.dtype!r}")
    for key in ("num_records", "records_per_shard", "batch_size", "num_actors"):
        _count(f"cache.{key}", getattr(c, key))
    _count("cache.seed", c.seed, low=0)
    _gpus("cache.gpus_per_actor", c.gpus_per_actor)
    _number("cache.cpus_per_actor", c.cpus_per_actor, low=0, low_open=True)
    s = cfg.student
    need(s.architecture in ("teacher", "tiny"), "student.architecture",
         f"must be 'teacher' or 'tiny', got {s.architecture!r}")
    if s.architecture == "teacher" and cfg.teacher.kind == "gmm":
        raise ConfigError("config keys 'student.architecture' and 'teacher.kind': student.architecture 'teacher' "
                          "copies an EDM or ADM teacher's network, but teacher.kind 'gmm' is a Gaussian mixture, "
                          "which has none; set student.architecture=tiny, or start from the embedded digits default "
                          "run (--config jobs/configs/digits.yaml)")
    _count("student.init_steps", s.init_steps)
    _count("student.init_batch_size", s.init_batch_size)
    _number("student.init_lr", s.init_lr, low=0, low_open=True)
    _optional(_number, "student.dropout", s.dropout, low=0, high=1, high_open=True)
    _optional(_count, "student.channels", s.channels)
    if s.channels is not None and s.architecture != "tiny":
        raise ConfigError("config key 'student.channels': it sets the tiny student's width, but student.architecture "
                          f"is {s.architecture!r} (the teacher's own network); leave it unset")
    _check_train(cfg.train, need)
    _check_eval(cfg.eval, g, need)
    w = cfg.sweep
    for key in ("num_samples", "max_concurrent_trials", "grace_period", "report_every", "nfe"):
        _count(f"sweep.{key}", getattr(w, key))
    _count("sweep.reduction_factor", w.reduction_factor, low=2)  # ASHA keeps 1/reduction_factor at each rung
    _number("sweep.gamma", w.gamma, low=0, high=1)
    _count("sweep.seed", w.seed, low=0)
    _number("sweep.cpus_per_trial", w.cpus_per_trial, low=0)
    _count("sweep.max_failures", w.max_failures, low=-1)
    _count("sweep.schedule_trials", w.schedule_trials, low=0)
    need(w.schedule_trials == 0 or w.nfe >= 2, "sweep.schedule_trials",
         f"a schedule search needs sweep.nfe >= 2 (NFE 1 has no intermediate time), got nfe {w.nfe}")


def _check_train(t, need):
    need(t.teacher_mode in ("cached", "online"), "train.teacher_mode", f"must be 'cached' or 'online', got {t.teacher_mode!r}")
    for key in ("steps", "batch_size", "num_workers", "checkpoint_every", "num_to_keep", "log_every", "queue_steps"):
        _count(f"train.{key}", getattr(t, key))
    need(t.batch_size % t.num_workers == 0, "train.batch_size",
         f"global batch {t.batch_size} must divide evenly among {t.num_workers} workers")
    share = t.batch_size // t.num_workers
    _optional(_count, "train.micro_batch", t.micro_batch)
    need(t.micro_batch is None or share % t.micro_batch == 0, "train.micro_batch",
         f"each worker's share {share} must be a multiple of micro_batch {t.micro_batch}")
    need(t.distance in ("lpips", "pseudo_huber", "l2"), "train.distance", f"must be lpips, pseudo_huber or l2, got {t.distance!r}")
    for key in ("lr", "lr_d"):
        lr = getattr(t, key)
        need(0 < lr < math.inf, f"train.{key}", f"learning rates must be positive and finite, got {lr}")
    need(t.lr_schedule in ("constant", "cosine"), "train.lr_schedule",
         f"must be 'constant' or 'cosine', got {t.lr_schedule!r}")
    _optional(_count, "train.lr_decay_steps", t.lr_decay_steps)
    need(len(t.betas_d) == 2, "train.betas_d", f"RAdam takes two betas [beta1, beta2], got {list(t.betas_d)}")
    _numbers("train.betas_d", t.betas_d, low=0, high=1, high_open=True)
    _number("train.target_ema", t.target_ema, low=0, high=1, high_open=True)
    _numbers("train.ema_rates", t.ema_rates, low=0, high=1, high_open=True)
    _optional(_number, "train.lambda_dsm", t.lambda_dsm, low=0)
    _optional(_number, "train.lambda_gan", t.lambda_gan, low=0)
    _optional(_count, "train.gan_start", t.gan_start, low=0)
    _count("train.gan_warmup", t.gan_warmup, low=0)
    need(set(t.diffaug.split(",")) <= {"", "color", "translation", "cutout"},
         "train.diffaug", f"comma-separated DiffAugment policies of color, translation, cutout (or '' for none), "
         f"got {t.diffaug!r}")
    _gpus("train.gpus_per_worker", t.gpus_per_worker)
    _number("train.cpus_per_worker", t.cpus_per_worker, low=0)
    _count("train.max_failures", t.max_failures, low=-1)  # -1: retry forever
    _count("train.seed", t.seed, low=0)
    ema = t.init_target.startswith("ema_") and t.init_target[4:].replace(".", "", 1).isdigit()
    need(t.init_target == "target" or ema, "train.init_target",
         f"must be 'target' or 'ema_<rate>' (an EMA the checkpoint holds, e.g. ema_0.999), got {t.init_target!r}")
    need(t.init_target == "target" or t.init_checkpoint, "train.init_target",
         "resets θ⁻ from train.init_checkpoint's EMA; set train.init_checkpoint (or use --from-checkpoint DIR)")
    need(t.mlflow is None or "tracking_uri" in t.mlflow, "train.mlflow", "needs its tracking_uri (nothing is sent "
         "anywhere unless asked; a local folder works: file:///path/mlruns)")
    for key, allowed in (("mlflow", {"tracking_uri", "experiment"}), ("wandb", {"project", "mode", "entity", "group"})):
        value = getattr(t, key)
        need(value is None or set(value) <= allowed, f"train.{key}", f"takes {sorted(allowed)}, got {value}")
        need(value is None or importlib.util.find_spec(key) is not None, f"train.{key}",
             f"is set, but {key} is not installed: pip install 'ctm-ray[{key}]' (or set train.{key}=null)")


def _check_eval(e, g, need):
    _numbers("eval.nfe", e.nfe, low=1, integer=True)
    _numbers("eval.gammas", e.gammas, low=0, high=1)
    _numbers("eval.schedule_nfe", e.schedule_nfe, low=1, integer=True)
    _numbers("eval.schedule_gammas", e.schedule_gammas, low=0, high=1)
    for key in ("two_step", "schedule_two_step"):
        pairs = getattr(e, key)
        need(all(isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(i, int) for i in p)
                 and 0 < p[1] <= p[0] < g.N - 1 for p in pairs),
             f"eval.{key}", f"needs [i1, i2] pairs of grid indices with 0 < i2 <= i1 < N-1 = {g.N - 1}, got {pairs}")
    need(e.features in ("digits", "inception"), "eval.features", f"must be 'digits' or 'inception', got {e.features!r}")
    need(e.features != "inception" or e.inception_path, "eval.inception_path",
         "Inception features need the local file inception-2015-12-05.pt (it cannot be downloaded here)")
    _count("eval.num_samples", e.num_samples, low=2)  # a covariance needs two samples
    for key in ("batch_size", "num_actors", "likelihood_samples"):
        _count(f"eval.{key}", getattr(e, key))
    _count("eval.seed", e.seed, low=0)
    _count("eval.repeats", e.repeats)
    _gpus("eval.gpus_per_actor", e.gpus_per_actor)
    _number("eval.cpus_per_actor", e.cpus_per_actor, low=0)
    _number("eval.ema_rate", e.ema_rate, low=0, high=1, high_open=True)  # 0: the online weights
