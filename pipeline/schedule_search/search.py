"""A Ray Tune schedule search: trials are sampling schedules (γ and the intermediate times) of one finished checkpoint
at one NFE, each scored by the shared evaluation actors with the FID of every evaluation.

    outcome = run_schedule_search(cfg, checkpoint, nfe=2, searcher="optuna", trials=20)   # Ray initialised

Nothing is trained: a trial is one `pool.submit` of its setting to an idle actor of the pool, and at most
eval.num_actors trials run at once, so each actor keeps the checkpoint and the reference statistics
loaded from trial to trial and a trial costs only its sampling and feature pass. Every trial starts from the same
seeded latents (eval.seed), as every setting of one evaluation does.

The experiment folder <storage_path>/<name> is Tune's own; it also holds search.json (what was searched) and, once
every trial has ended, best.json. The best schedule goes to schedules.json beside the checkpoint.
"""

import importlib.util
import json
import tempfile
from pathlib import Path

import ray
from ray import tune
from ray.tune.search import BasicVariantGenerator
from ray.util.queue import Empty, Queue

from pipeline.checkpoint import checkpoint_file
from pipeline.config import ConfigError
from pipeline.evaluation import EvaluatorPool
from pipeline.evaluation.report import public
from pipeline.evaluation.schedules import schedule_entry, write_schedule

from .space import SEARCHERS, check_nfe, default_params, grid_values, num_trials, param_names, schedule_setting

RECORD_FILE = "evaluation.json"
TRIAL_CPUS = 0.05  # a trial only waits for its actor (Tune refuses a trial that asks for nothing)


def trial_dirname(trial):
    """trial_<number>_<id>: Tune's experiment tag starts with the trial's running number."""
    return f"trial_{int(trial.experiment_tag.split('_')[0]):04d}_{trial.trial_id}"


def idle_actors(pool):
    """A queue of the pool's actor indices: a running trial takes an idle actor and puts it back when scored."""
    idle = Queue(actor_options={"num_cpus": 0})
    for i in range(len(pool.actors)):
        idle.put(i)
    return idle


def run_schedule_trial(params, pool, idle, checkpoint, nfe, grid):
    """The trainable: score the setting that params {landing, cut_1, …} name on an idle actor of the pool."""
    setting = schedule_setting(params, nfe, grid)
    saved = tune.get_checkpoint()
    if saved is not None:  # scored and reported just before an interruption: report it again, do not rescore
        tune.report(trial_metrics(read_record(saved), setting))
        return
    try:
        actor = idle.get_nowait()
    except Empty:  # a trial killed while scoring kept its actor: take turns instead
        actor = None
    try:
        result, = ray.get(pool.submit(checkpoint, [setting], actor=actor))
    finally:
        if actor is not None:
            idle.put(actor)
    record = public(result)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, RECORD_FILE).write_text(json.dumps(record, default=str))
        tune.report(trial_metrics(record, setting), checkpoint=tune.Checkpoint.from_directory(tmp))


def read_record(checkpoint):
    """A trial's full evaluation record, kept in its Tune checkpoint."""
    with checkpoint.as_directory() as d:
        return json.loads(Path(d, RECORD_FILE).read_text())


def trial_metrics(record, setting):
    return {"fid": record["fid"], "gamma": setting.gamma, "sigmas": list(setting.sigmas),
            "eval_seconds": record["seconds"]}


def search_alg(searcher, nfe, trials, seed, concurrency):
    """(param_space, search_alg, num_samples) of a searcher; random and optuna try the default schedule first."""
    start = [default_params(nfe)]
    if searcher == "grid":
        return ({k: tune.grid_search(v) for k, v in grid_values(nfe, trials).items()},
                BasicVariantGenerator(max_concurrent=concurrency), 1)
    space = {name: tune.uniform(0.0, 1.0) for name in param_names(nfe)}
    if searcher == "random":
        return space, BasicVariantGenerator(points_to_evaluate=start, random_state=seed, max_concurrent=concurrency), \
            trials
    from optuna.samplers import TPESampler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch
    tpe = TPESampler(seed=seed, n_startup_trials=max(2, trials // 4), multivariate=True)  # γ and the times interact
    return space, ConcurrencyLimiter(OptunaSearch(points_to_evaluate=start, sampler=tpe), concurrency), trials


def check_search(searcher, nfe, trials):
    if searcher not in SEARCHERS:
        raise ConfigError(f"unknown searcher {searcher!r}: use one of {', '.join(SEARCHERS)}")
    check_nfe(nfe)
    if trials < 1:
        raise ConfigError(f"the trial budget must be positive, got {trials}")
    if searcher == "optuna":
        if importlib.util.find_spec("optuna") is None:
            raise ConfigError("the optuna searcher needs Optuna: pip install 'ctm-ray[search]' (or pip install "
                              "optuna), or pass --searcher random or grid")


def search_record(cfg, checkpoint, nfe, searcher, trials, seed):
    """What a search is: its restore must search the same thing."""
    return {"checkpoint": str(checkpoint), "nfe": nfe, "searcher": searcher, "trials": trials, "seed": seed,
            "num_trials": num_trials(searcher, nfe, trials), "config": json.loads(json.dumps(cfg.to_dict()))}


def trial_summary(result):
    """{trial, status, fid, gamma, sigmas, params} of one trial: done, error or not done (interrupted)."""
    m = result.metrics or {}
    status = "error" if result.error is not None else "done" if m.get("done") else "not done"
    return {"trial": Path(result.path).name, "status": status, "fid": m.get("fid"),
            "gamma": m.get("gamma"), "sigmas": m.get("sigmas"), "params": dict(result.config or {})}


def format_table(trials):
    rows = [f"{'trial':<26}{'status':<10}{'FID':>10}{'γ':>8}  intermediate times"]
    for t in trials:
        fid = "-" if t["fid"] is None else f"{t['fid']:.4g}"
        gamma = "-" if t["gamma"] is None else f"{t['gamma']:.3f}"
        times = ", ".join(f"{s:.4g}" for s in t["sigmas"] or [])
        rows.append(f"{t['trial']:<26}{t['status']:<10}{fid:>10}{gamma:>8}  {times}")
    return "\n".join(rows)


def default_name(checkpoint, nfe, searcher):
    file = checkpoint_file(checkpoint)
    return f"{file.parent.parent.name}_{file.parent.name}_nfe{nfe}_{searcher}"


def run_schedule_search(cfg, checkpoint, nfe=2, searcher="optuna", trials=20, seed=0, storage_path=None, name=None,
                        restore=False, pool=None, callbacks=(), log=print):
    """Search the schedule of `checkpoint` at `nfe`, or continue that search (finished trials are kept, unfinished
    ones rerun). storage_path defaults to <eval.out>/schedule_search, name to <run>_<checkpoint>_nfe<n>_<searcher>.
    restore=True refuses to start a new search. pool: an EvaluatorPool for cfg (default: one started and shut down
    here). callbacks: Tune callbacks.

    Returns {"path", "complete", "trials", "best", "schedule"}; "best" is the lowest-FID trial's full evaluation record
    and "schedule" the schedules.json entry now on file at this NFE (both None until every trial has ended).
    """
    check_search(searcher, nfe, trials)
    checkpoint = str(checkpoint_file(checkpoint).parent)
    storage = Path(storage_path or Path(cfg.eval.out) / "schedule_search").resolve()
    path = storage / (name or default_name(checkpoint, nfe, searcher))
    record = search_record(cfg, checkpoint, nfe, searcher, trials, seed)
    restoring = tune.Tuner.can_restore(str(path))
    if restore and not restoring:
        raise ConfigError(f"nothing to restore: no schedule search at {path}; leave out --restore to start it")
    if restoring:
        saved = json.loads((path / "search.json").read_text())
        differ = sorted(k for k in record if record[k] != saved.get(k))
        if differ:
            raise ConfigError(f"the schedule search at {path} searched something else ({', '.join(differ)} differ): "
                              "continue it with the same arguments, or start another with --name")
    expected = record["num_trials"]
    log(f"[schedule search] {'continuing' if restoring else 'starting'} {searcher} at NFE {nfe} on {checkpoint} "
        f"({expected} trials) in {path}")
    own_pool = pool is None
    pool = EvaluatorPool(cfg) if own_pool else pool
    idle = idle_actors(pool)
    try:
        trainable = tune.with_resources(tune.with_parameters(run_schedule_trial, pool=pool, idle=idle,
                                                             checkpoint=checkpoint, nfe=nfe, grid=cfg.grid.grid()),
                                        {"CPU": TRIAL_CPUS})
        if restoring:
            tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, restart_errored=False)
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "search.json").write_text(json.dumps(record, indent=2))
            space, alg, num_samples = search_alg(searcher, nfe, trials, seed, len(pool.actors))
            tuner = tune.Tuner(trainable, param_space=space,
                               tune_config=tune.TuneConfig(metric="fid", mode="min", search_alg=alg,
                                                           num_samples=num_samples, reuse_actors=True,
                                                           trial_dirname_creator=trial_dirname),
                               run_config=tune.RunConfig(name=path.name, storage_path=str(storage),
                                                         callbacks=list(callbacks), verbose=0))
        results = tuner.fit()
    finally:
        idle.shutdown(force=True)
        if own_pool:
            pool.shutdown()
    summary = sorted((trial_summary(r) for r in results), key=lambda t: t["trial"])
    log(format_table(summary))
    complete = len(results) == expected and all(t["status"] != "not done" for t in summary)
    outcome = {"path": str(path), "complete": complete, "trials": summary, "best": None, "schedule": None}
    scored = [r for r in results if r.error is None and r.metrics.get("done")]
    if not complete or not scored:
        return outcome
    evaluation = read_record(min(scored, key=lambda r: r.metrics["fid"]).checkpoint)
    search = {"searcher": searcher, "trials": expected, "seed": seed, "experiment": str(path)}
    (path / "best.json").write_text(json.dumps({"best": evaluation, "search": search, "trials": summary},
                                               indent=2, default=str))
    outcome.update(best=evaluation, schedule=write_schedule(checkpoint, schedule_entry(evaluation, search)))
    return outcome
