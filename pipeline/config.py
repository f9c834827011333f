"""One typed configuration for every stage: YAML, overridden by dotted `--set key=value`, validated before any work.

An unknown key, a wrong type or an impossible value stops the run with a message that names the key.
"""

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


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

    @property
    def K_max(self):
        return self.N - 1 if self.K is None else self.K


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
    architecture: str = "teacher"     # "teacher": the teacher's EDM network plus the s-path; "tiny": small DDPM++
    init_from_teacher: bool = True    # start as the teacher: copy its weights (EDM, ADM), or regress onto its exact
                                      # denoiser (mixture; cached under <cache.root>/teacher-start/)
    init_steps: int = 2000            # mixture teacher: regression steps (cosine learning-rate decay to 0)
    init_batch_size: int = 128
    init_lr: float = 2e-3
    dropout: float | None = None      # None keeps the architecture's own (DDPM++ 0.13)


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
    discriminator: str = "tiny"       # tiny | tf_efficientnet_lite0+deit_base_distilled_patch16_224 (official) | efficientnet_b0+vit_b_16
    discriminator_weights: dict = field(default_factory=dict)
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
    seed: int = 0
    fail_at_step: int | None = None   # TEST ONLY: rank 0 dies once at this step (a marker in the run dir stops repeats)


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
    cpus_per_actor: float = 1.0
    reference_cache: str | None = None  # where reference statistics are cached (None = <eval.out>/references)
    likelihood_samples: int = 64      # images scored for NLL (bits/dim, Hutchinson)
    likelihood_path: str | None = None  # held-out images of the same dataset kind (None = a subset of data.path)
    sweep_nfe: tuple = (1, 2, 3, 4, 6, 8)         # γ-schedule sweep on finished checkpoints (no training)
    sweep_gammas: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
    sweep_two_step: tuple = ()        # [i1, i2] pairs swept beside sweep_nfe × sweep_gammas


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


def parse_override(text):
    """'train.lr=1e-4' -> ('train.lr', 1e-4); the value is read as YAML (numbers, lists, null, true)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


EMBEDDED_DEFAULT = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "digits.yaml"


def load_config(path=None, overrides=(), base=None):
    """A validated Config from `base` (a config dict) and/or a YAML file, then dotted overrides.

    Keys that neither gives take the dataclass defaults above, which are the official hyperparameters; the embedded
    digits default run is the file EMBEDDED_DEFAULT.
    """
    tree = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        tree = _merge(tree, loaded)
    tree = json.loads(json.dumps(tree))  # deep copy of plain data
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        _set_dotted(tree, key, value)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def _merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def validate(cfg):
    """Impossible values, named by key."""
    def need(cond, key, msg):
        if not cond:
            raise ConfigError(f"config key '{key}': {msg}")
    g = cfg.grid
    need(0 < g.sigma_min < g.sigma_max, "grid.sigma_min", f"need 0 < sigma_min < sigma_max, got {g.sigma_min} and {g.sigma_max}")
    need(g.N >= 2, "grid.N", f"need at least 2 grid points, got {g.N}")
    need(1 <= g.K_max <= g.N - 1, "grid.K", f"need 1 <= K <= N-1 = {g.N - 1}, got {g.K}")
    need(cfg.teacher.kind in ("gmm", "edm", "adm"), "teacher.kind",
         f"must be 'gmm', 'edm' or 'adm', got {cfg.teacher.kind!r}")
    need(cfg.teacher.kind == "gmm" or cfg.teacher.path, "teacher.path",
         f"an {cfg.teacher.kind.upper()} teacher needs the path of its {'.pkl' if cfg.teacher.kind == 'edm' else '.pt'}")
    need(cfg.data.name in ("digits", "cifar10", "imagenet64", "folder"), "data.name",
         f"must be digits, cifar10, imagenet64 or folder, got {cfg.data.name!r}")
    need(cfg.data.name == "digits" or cfg.data.path, "data.path", f"dataset {cfg.data.name!r} needs a path")
    need(cfg.data.resolution is None or (cfg.data.name in ("folder", "imagenet64") and cfg.data.resolution >= 1),
         "data.resolution", "only folder and imagenet64 images are resized (digits are 8x8, cifar10 32x32); must be >= 1")
    need(cfg.data.max_images is None or cfg.data.max_images >= 1, "data.max_images", "must be positive or null")
    c = cfg.cache
    need(c.mode in ("data", "noise"), "cache.mode", f"must be 'data' or 'noise', got {c.mode!r}")
    need(c.dtype in ("float16", "float32"), "cache.dtype", f"must be float16 or float32, got {c.dtype!r}")
    need(c.num_records >= 1, "cache.num_records", "must be positive")
    need(c.records_per_shard >= 1, "cache.records_per_shard", "must be positive")
    need(c.batch_size >= 1 and c.num_actors >= 1, "cache.batch_size", "batch size and actor count must be positive")
    need(c.gpus_per_actor > 0 and c.cpus_per_actor > 0, "cache.cpus_per_actor", "resources per actor must be positive")
    t = cfg.train
    need(t.teacher_mode in ("cached", "online"), "train.teacher_mode", f"must be 'cached' or 'online', got {t.teacher_mode!r}")
    need(t.num_workers >= 1, "train.num_workers", "must be at least 1")
    need(t.batch_size % t.num_workers == 0, "train.batch_size",
         f"global batch {t.batch_size} must divide evenly among {t.num_workers} workers")
    share = t.batch_size // t.num_workers
    need(t.micro_batch is None or (t.micro_batch >= 1 and share % t.micro_batch == 0), "train.micro_batch",
         f"each worker's share {share} must be a multiple of micro_batch {t.micro_batch}")
    need(t.distance in ("lpips", "pseudo_huber", "l2"), "train.distance", f"must be lpips, pseudo_huber or l2, got {t.distance!r}")
    need(0 <= t.target_ema < 1 and all(0 <= r < 1 for r in t.ema_rates), "train.target_ema", "EMA rates must lie in [0, 1)")
    need(t.steps >= 1, "train.steps", "must be positive")
    need(t.checkpoint_every >= 1, "train.checkpoint_every", "must be positive")
    need(t.log_every >= 1 and t.num_to_keep >= 1, "train.log_every", "log_every and num_to_keep must be positive")
    need(t.max_failures >= -1, "train.max_failures", "must be >= 0 (or -1: retry forever)")
    need(t.lr_schedule in ("constant", "cosine"), "train.lr_schedule",
         f"must be 'constant' or 'cosine', got {t.lr_schedule!r}")
    need(t.lr_decay_steps is None or t.lr_decay_steps >= 1, "train.lr_decay_steps", "must be positive or null")
    need(t.lr > 0 and t.lr_d > 0, "train.lr", f"learning rates must be positive, got lr={t.lr}, lr_d={t.lr_d}")
    need(t.gan_start is None or t.gan_start >= 0, "train.gan_start", "must be >= 0 or null (no GAN)")
    ema = t.init_target.startswith("ema_") and t.init_target[4:].replace(".", "", 1).isdigit()
    need(t.init_target == "target" or ema, "train.init_target",
         f"must be 'target' or 'ema_<rate>' (an EMA the checkpoint holds, e.g. ema_0.999), got {t.init_target!r}")
    need(t.init_target == "target" or t.init_checkpoint, "train.init_target",
         "resets θ⁻ from train.init_checkpoint's EMA; set train.init_checkpoint (or use --from-checkpoint DIR)")
    need(t.queue_steps >= 1, "train.queue_steps", f"must be at least 1, got {t.queue_steps}")
    need(t.fail_at_step is None or 0 <= t.fail_at_step < t.steps, "train.fail_at_step", "test-only; must lie in [0, steps)")
    need(cfg.student.architecture in ("teacher", "tiny"), "student.architecture",
         f"must be 'teacher' or 'tiny', got {cfg.student.architecture!r}")
    need(cfg.student.init_steps >= 1 and cfg.student.init_batch_size >= 1 and cfg.student.init_lr > 0,
         "student.init_steps", "the teacher start's steps, batch size and learning rate must be positive")
    need(cfg.student.dropout is None or 0 <= cfg.student.dropout < 1, "student.dropout", "must lie in [0, 1) or be null")
    e = cfg.eval
    need(all(n >= 1 for n in e.nfe), "eval.nfe", f"every NFE must be >= 1, got {e.nfe}")
    need(all(0 <= x <= 1 for x in e.gammas), "eval.gammas", f"every γ must lie in [0, 1], got {e.gammas}")
    need(e.features in ("digits", "inception"), "eval.features", f"must be 'digits' or 'inception', got {e.features!r}")
    need(e.features != "inception" or e.inception_path, "eval.inception_path",
         "Inception features need the local file inception-2015-12-05.pt (it cannot be downloaded here)")
    need(all(n >= 1 for n in e.sweep_nfe) and all(0 <= x <= 1 for x in e.sweep_gammas), "eval.sweep_nfe",
         f"sweep NFEs must be >= 1 and γ's in [0, 1], got {e.sweep_nfe} and {e.sweep_gammas}")
    for key in ("two_step", "sweep_two_step"):
        pairs = getattr(e, key)
        need(all(isinstance(p, (list, tuple)) and len(p) == 2 and 0 < p[1] <= p[0] < g.N - 1 for p in pairs),
             f"eval.{key}", f"needs [i1, i2] pairs with 0 < i2 <= i1 < N-1 = {g.N - 1}, got {pairs}")
    need(e.num_samples >= 2 and e.batch_size >= 1, "eval.num_samples", "need at least 2 samples and a positive batch")
    need(e.num_actors >= 1, "eval.num_actors", "must be at least 1")
    need(0 <= e.ema_rate < 1, "eval.ema_rate", f"an EMA rate in [0, 1) (0: the online weights), got {e.ema_rate}")
    need(e.likelihood_samples >= 1, "eval.likelihood_samples", "must be positive")
    s = cfg.sweep
    need(s.num_samples >= 1 and s.max_concurrent_trials >= 1, "sweep.num_samples",
         "num_samples and max_concurrent_trials must be positive")
    need(s.report_every >= 1 and s.grace_period >= 1, "sweep.report_every", "report_every and grace_period must be positive")
    need(s.reduction_factor >= 2, "sweep.reduction_factor", f"ASHA needs a reduction factor >= 2, got {s.reduction_factor}")
    need(s.nfe >= 1 and 0 <= s.gamma <= 1, "sweep.nfe", f"need nfe >= 1 and 0 <= gamma <= 1, got {s.nfe} and {s.gamma}")
    need(s.cpus_per_trial >= 0 and s.max_failures >= -1, "sweep.cpus_per_trial",
         "cpus_per_trial must be >= 0 and max_failures >= -1")
