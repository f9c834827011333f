"""A Ray Tune sweep of the training config (loss weights, GAN start, learning rate ...) with ASHA on the FID that the
evaluation actors report.

    outcome = run_sweep(cfg)     # Ray initialised; continues the sweep when its folder already holds one

The sweep folder <sweep.storage_path>/<sweep.name> holds Tune's experiment state and one folder per trial
(trial_<id>/), config.yaml (the sweep's config), train/<trial id>/ (each trial's Train run: checkpoints,
stats.jsonl, samples) and, once every trial has ended, best.json and best_config.yaml.
"""

import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from pipeline.cache import CacheNotFoundError, generate_cache, open_cache
from pipeline.config import ConfigError
from pipeline.evaluation import EvaluatorPool
from pipeline.teachers import build_teacher
from pipeline.train.state import student_kwargs
from pipeline.train.teacher_start import needs_regression, teacher_start
from pipeline.train.rundir import RunDir

from .space import check_search_space, num_trials, param_space
from .summary import best_trial, format_table, trial_summary, write_best
from .trial import milestones, run_trial


def trial_dirname(trial):
    return f"trial_{trial.trial_id}"


def ensure_cache(cfg, log=print):
    """The trajectory cache every trial reads, generated here once when it is missing or short."""
    try:
        if open_cache(cfg.cache.root, cfg).num_records >= cfg.cache.num_records:
            return
    except CacheNotFoundError:
        pass
    generate_cache(cfg, log=log)


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {prefix + key: value})
    return out


def check_same_config(exp, cfg):
    """A restored sweep goes on with the config it started with; refuse another one, naming the keys that differ."""
    saved = exp.read_text("config.yaml")
    if saved is None:
        return
    old, new = _flatten(yaml.safe_load(saved)), _flatten(yaml.safe_load(cfg.dump()))
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        raise ConfigError(f"the sweep at {exp.url} was started with another config ({', '.join(differ)} differ): "
                          "continue it with the same --config and --set, or start a new one with another sweep.name")


def check_sweep(cfg):
    """Refuse a sweep that cannot run (ConfigError naming the key) before anything starts; the reports per trial."""
    check_search_space(cfg)
    if cfg.eval.ema_rate != 0 and cfg.eval.ema_rate not in cfg.train.ema_rates:
        raise ConfigError(f"config key 'eval.ema_rate': trials keep EMAs at train.ema_rates "
                          f"{list(cfg.train.ema_rates)}, not {cfg.eval.ema_rate}; score one of those, or 0 (the "
                          "online weights)")
    reports = len(milestones(cfg.train.steps, cfg.sweep.report_every))
    if cfg.sweep.grace_period > reports:
        raise ConfigError(f"config key 'sweep.grace_period': {cfg.sweep.grace_period} exceeds the {reports} reports a "
                          f"trial makes (train.steps {cfg.train.steps} / sweep.report_every {cfg.sweep.report_every})")
    return reports


def new_tuner(cfg, trainable, storage_path, filesystem, callbacks):
    s = cfg.sweep
    asha = ASHAScheduler(time_attr="training_iteration", max_t=check_sweep(cfg), grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(metric="fid", mode="min", scheduler=asha,
                                    search_alg=BasicVariantGenerator(max_concurrent=s.max_concurrent_trials,
                                                                     random_state=s.seed),
                                    num_samples=s.num_samples, trial_dirname_creator=trial_dirname, reuse_actors=True),
        run_config=tune.RunConfig(name=s.name, storage_path=storage_path, storage_filesystem=filesystem,
                                  failure_config=tune.FailureConfig(max_failures=s.max_failures),
                                  callbacks=list(callbacks)),
    )


def run_sweep(cfg, restore=False, callbacks=(), pool=None, log=print):
    """Run the sweep cfg.sweep names, or continue it (unfinished trials resume from their last report; finished and
    failed ones are kept as they are). restore=True refuses to start a new sweep. callbacks: Tune callbacks of a new
    sweep (a restored one keeps its own). pool: an EvaluatorPool for cfg to score the trials with (default: one
    started here and shut down at the end).

    Returns {"path", "complete", "trials", "best", "best_config"}; "best" (the trial with the lowest last FID among
    those that did not fail) and "best_config" are None until every trial has ended.
    """
    s = cfg.sweep
    check_sweep(cfg)
    exp = RunDir(s.storage_path, s.name, s.storage_options)
    storage_path, filesystem = exp.ray_storage()
    path = f"{storage_path}/{s.name}"
    restoring = tune.Tuner.can_restore(path, storage_filesystem=filesystem)
    if restore and not restoring:
        raise ConfigError(f"nothing to restore: no Tune sweep at {exp.url}; leave out --restore to start it")
    if restoring:
        check_same_config(exp, cfg)
    else:
        exp.write_text("config.yaml", cfg.dump())
    log(f"[sweep] {'continuing' if restoring else 'starting'} the sweep at {exp.url} ({num_trials(cfg)} trials)")
    if s.schedule_trials:
        log(f"[sweep] each report is the best FID of {s.schedule_trials} schedules at NFE {s.nfe}: about "
            f"{s.schedule_trials}x the evaluation of one fixed setting; each trial prints what it cost")
    if cfg.train.teacher_mode == "cached":
        ensure_cache(cfg, log)
    train_root = f"{exp.path if filesystem is None else exp.url}/train"
    fitted = build_teacher(cfg) if cfg.teacher.kind == "gmm" and cfg.teacher.path is None else None
    teacher = fitted or build_teacher(cfg)
    if needs_regression(cfg, teacher):  # once here, not in each trial (a trial drawing other seeds makes its own)
        teacher_start(cfg, teacher, student_kwargs(cfg, teacher), log)
    own_pool = pool is None
    pool = EvaluatorPool(cfg) if own_pool else pool
    try:
        trainable = tune.with_resources(tune.with_parameters(run_trial, base=cfg.to_dict(), pool=pool,
                                                             train_root=train_root, teacher=fitted),
                                        {"CPU": s.cpus_per_trial})
        if restoring:
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, storage_filesystem=filesystem)
        else:
            tuner = new_tuner(cfg, trainable, storage_path, filesystem, callbacks)
        grid = tuner.fit()
    finally:
        if own_pool:
            pool.shutdown()
    complete = len(grid) == num_trials(cfg) and grid.num_terminated + grid.num_errors == len(grid)
    trials = sorted((trial_summary(r, cfg.train.steps, complete) for r in grid), key=lambda t: t["trial_id"])
    log(format_table(trials))
    best = best_trial(trials) if complete else None
    best_cfg = write_best(exp, grid, trials, best, cfg, train_root) if best else None
    return {"path": exp.url, "complete": complete, "trials": trials, "best": best, "best_config": best_cfg}
