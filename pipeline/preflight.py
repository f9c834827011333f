"""One preflight for every stage and for --dry-run: each input the stages read is checked on the driver, without Ray
and without writing anything; every input that is missing or unusable is named in one error (a user placing weights
files learns of all of them at once); and what the checks built (the teacher, the student's kwargs, the trajectory
cache) is handed to the stages, which build none of it again.

    inputs = preflight(cfg, {"generate", "train", "evaluate"})   # raises one error naming every bad input
    print("\\n".join(inputs.lines))                               # what each stage will use (--dry-run)
    run_training(cfg, inputs=inputs)                             # nothing checked or built twice

Stages: "generate" (the teacher's identity, the dataset in data mode, the cache if there is one yet), "train" (the
teacher, its student, the dataset in online mode, the weights files, train.init_checkpoint, the cache in cached
mode), "evaluate" (the feature network, each checkpoint, the reference statistics, the held-out images, the teacher
for its own FID).
"""

import dataclasses
from pathlib import Path

from ctm.discriminator import BUILT_IN, TIMM_WEIGHTS, TORCHVISION_WEIGHT_FILES
from pipeline.cache import CacheError, damaged_error, open_cache
from pipeline.cache.manifest import missing_shards
from pipeline.checkpoint import load_checkpoint, load_student
from pipeline.config import ConfigError
from pipeline.datasets import check_dataset
from pipeline.evaluation.features import check_features
from pipeline.teachers import build_teacher, check_images_fit_teacher, configured_teacher_identity
from pipeline.train.state import student_kwargs
from pipeline.train.teacher_start import needs_regression, teacher_start_source

EVERY_STAGE = frozenset({"generate", "train", "evaluate"})


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
        except (ValueError, FileNotFoundError, CacheError) as e:
            self.errors += e.errors if isinstance(e, InputError) else [e]
            return None

    def note(self, check, *args):
        """check(*args), which returns a line saying what it found, kept in `lines`."""
        line = self(check, *args)
        if line is not None:
            self.lines.append(line)
        return line

    def described(self, check, *args):
        """check(*args) returns (value, line): the value, its line kept in `lines`; None when the check failed."""
        found = self(check, *args)
        if found is None:
            return None
        self.lines.append(found[1])
        return found[0]

    def raise_errors(self):
        """Raise the one error found as itself, several as one InputError; nothing when every check passed."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise InputError(self.errors)


@dataclasses.dataclass
class Inputs:
    """What a preflight of `cfg` built: the teacher (None unless a stage builds it on the driver), the student's
    CTMPrecond kwargs, the trajectory cache (opened and past the quick check; None where there is none yet) and one
    line per input found."""
    cfg: object
    teacher: object = None
    student_kwargs: dict = None
    cache: object = None
    lines: list = dataclasses.field(default_factory=list)

    @property
    def cache_ready(self):
        """The cache holds every record cache.num_records asks for: generation has nothing to do."""
        return self.cache is not None and not missing_shards(self.cache.manifest, self.cfg.cache.num_records)


# ---- the teacher, the data, the student --------------------------------------------------------------------------

def _teacher(cfg, build):
    """((the teacher or None, its identity), line): built on the CPU when `build`, else only identified (a network
    teacher is built by the generation actors, never on the driver)."""
    teacher = build_teacher(cfg) if build else None
    identity = teacher.identity() if build else configured_teacher_identity(cfg)
    return (teacher, identity), (f"teacher: {identity['kind']} {cfg.teacher.path or '(fitted to the digits)'}, images "
                                 f"{tuple(identity['image_shape'])}, {identity['label_dim']} labels, digest "
                                 f"{identity['digest'][:16]}")


def _dataset(data_cfg):
    data = check_dataset(data_cfg)
    count = data["num_images"] if data["num_images"] is not None else "unknown number of"
    return data, f"data: {data['name']} {data_cfg.path or ''} images {tuple(data['image_shape'])}, {count} images"


def _student(cfg, teacher):
    kwargs = student_kwargs(cfg, teacher)
    if kwargs["label_dim"] and not cfg.data.use_labels:
        raise ConfigError(f"config key 'data.use_labels': the student is class-conditional ({kwargs['label_dim']} "
                          "labels, like its teacher); set data.use_labels=true")
    return kwargs, (f"student: {kwargs['model_type']} {kwargs.get('model_channels')} channels, {kwargs['label_dim']} "
                    "labels")


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
        for arch in (a for a in t.discriminator.split("+") if a not in BUILT_IN):
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
    # the checkpoint records CTMPrecond's every argument; the config decides the network's (dropout may change)
    theirs = parts["student_kwargs"]
    differ = sorted(k for k, v in (kwargs or {}).items() if k != "dropout" and theirs.get(k, v is None) != v)
    if differ:
        raise ConfigError(f"config key 'train.init_checkpoint': its student differs from this config's in {differ}; "
                          "match student.* (and the teacher) to the run that wrote it")
    return f"train.init_checkpoint: {t.init_checkpoint} (step {int(parts['step'])})"


# ---- the trajectory cache ----------------------------------------------------------------------------------------

def _cache(cfg, teacher, stages):
    """(the config's cache, line), opened and past the quick check (object lists and sizes, the sha256 of every
    shard's metadata and 1-D arrays; the chunks of states and x0 are checked as the workers read them). When
    generation runs first, a cache it would build, finish or refuse itself is (None, line); else CacheError."""
    try:
        cache = open_cache(cfg.cache.root, cfg, teacher=teacher)
    except CacheError as e:
        if "generate" not in stages:
            raise
        return None, (f"cache: none yet under {cfg.cache.root} for this config; generate will build it "
                      f"({type(e).__name__})")
    damaged = cache.verify(full=False)["damaged"]
    if damaged and "train" in stages:
        raise damaged_error(cache.url, damaged)
    if damaged:
        return None, f"cache: {cache.url} has damaged shards; generate refuses them (--repair rewrites them)"
    return cache, f"cache: {cache.url} holds {cache.num_records} of {cfg.cache.num_records} records"


def check_cached_training(cfg, cache, generating):
    """The cache can feed this training: a global batch within its records (those generation will hold, when it
    runs first) and, for a noise-mode cache, no loss that needs real images."""
    records = cache.num_records if cache is not None else 0
    records = max(records, cfg.cache.num_records) if generating else records
    if records < cfg.train.batch_size:
        raise ConfigError(f"config key 'train.batch_size': the global batch {cfg.train.batch_size} is larger than the "
                          f"cache's {records} records; generate more (cache.num_records) or lower it")
    if cfg.cache.mode == "noise" and (cfg.train.lambda_dsm != 0 or cfg.train.gan_start is not None):
        raise ConfigError("config key 'cache.mode': a noise-mode cache has no real images for DSM or the GAN's real "
                          "branch; set train.lambda_dsm=0 and train.gan_start=null, or use a data-mode cache")


# ---- evaluation --------------------------------------------------------------------------------------------------

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


# ---- the preflight -----------------------------------------------------------------------------------------------

def preflight(cfg, stages=EVERY_STAGE, checkpoints=()):
    """Check every input the `stages` read (checkpoints: those the evaluation scores); raise the one error found,
    or InputError naming each of several. Returns the Inputs built on the way."""
    stages, checks = set(stages), Checks()
    train, cached = "train" in stages, "train" in stages and cfg.train.teacher_mode == "cached"
    generate, evaluate = "generate" in stages, "evaluate" in stages
    teacher_fid = evaluate and cfg.eval.teacher_fid
    teacher = identity = None
    if train or generate or teacher_fid:
        build = train or teacher_fid or not cfg.teacher.path  # a mixture fitted here is its own identity
        teacher, identity = checks.described(_teacher, cfg, build) or (None, None)
    reads_data = evaluate or (train and cfg.train.teacher_mode == "online") or (generate and cfg.cache.mode == "data")
    data = checks.described(_dataset, cfg.data) if reads_data else None
    data_failed = reads_data and data is None
    if identity is not None and data is not None:
        checks(check_images_fit_teacher, identity, cfg.data, data["image_shape"])
    inputs = Inputs(cfg, teacher, lines=checks.lines)
    if train:
        inputs.student_kwargs = None if teacher is None else checks.described(_student, cfg, teacher)
        for path, key, what in weights_files(cfg):
            checks.note(need_file, path, key, what)
        if cfg.train.init_checkpoint:
            checks.note(check_init_checkpoint, cfg, inputs.student_kwargs)
        if inputs.student_kwargs is not None and needs_regression(cfg, teacher):
            checks.note(lambda: f"student start: {teacher_start_source(cfg, teacher, inputs.student_kwargs)}")
    if (cached or generate) and identity is not None and not data_failed:  # its key names the teacher and the data
        found = checks(_cache, cfg, teacher, stages)
        if found is not None:
            inputs.cache = found[0]
            checks.lines.append(found[1])
        if cached and found is not None:
            checks(check_cached_training, cfg, inputs.cache, generate)
    if evaluate:
        checks.note(_features, cfg)
        for path in checkpoints:
            checks.note(_checkpoint, path, cfg.eval.ema_rate)
        if cfg.eval.reference_stats:
            checks.note(_reference_stats, cfg.eval.reference_stats)
        if cfg.eval.likelihood and cfg.eval.likelihood_path:
            checks(check_dataset, dataclasses.replace(cfg.data, path=cfg.eval.likelihood_path, max_images=None))
    checks.raise_errors()
    return inputs
