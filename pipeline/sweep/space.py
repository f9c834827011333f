"""The search space of a loss-weight sweep: dotted config keys → Ray Tune search-space specs.

    sweep:
      search_space:
        train.lambda_dsm: {loguniform: [0.1, 10]}
        train.lr: {choice: [1.0e-4, 4.0e-4]}
        train.gan_start: {grid_search: [100, 200]}

Every key and every value a spec can produce (the ends of a range, each listed value) is checked against the config
before any trial starts, so a typo or an impossible value fails the sweep at once instead of trial by trial.
"""

import dataclasses

from ray import tune

from pipeline.config import ConfigError, load_config

RANGES = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
LISTS = {"choice": tune.choice, "grid_search": tune.grid_search}
SWEPT_SECTIONS = ("train", "student")  # every trial reads the same trajectory cache and is scored the same way
SET_BY_SWEEP = ("train.storage_path", "train.storage_options", "train.run_name", "train.steps")


def _number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def candidates(kind, args, where):
    """The values of a spec to check: a range's ends (randint's upper end is exclusive), or every listed value."""
    if kind in LISTS:
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: {kind} needs a non-empty list of values, got {args!r}")
        return args
    if not (isinstance(args, list) and len(args) == 2 and all(map(_number, args)) and args[0] < args[1]):
        raise ConfigError(f"{where}: {kind} needs [low, high] with low < high, got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {args!r}")
    if kind == "randint":
        if not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{where}: randint needs integer bounds [low, high), got {args!r}")
        return [args[0], args[1] - 1]
    return [float(a) for a in args]


def check_key(cfg, key, where):
    section, _, leaf = key.partition(".")
    if section not in SWEPT_SECTIONS or key in SET_BY_SWEEP:
        raise ConfigError(f"{where}: only {' and '.join(s + '.*' for s in SWEPT_SECTIONS)} keys can be swept (every "
                          f"trial reads the same trajectory cache and is scored alike); {', '.join(SET_BY_SWEEP)} "
                          "are set by the sweep itself")
    if leaf not in {f.name for f in dataclasses.fields(getattr(cfg, section))}:
        raise ConfigError(f"{where}: unknown config key '{key}'")


def check_search_space(cfg):
    """Raise ConfigError naming the first unknown key, unknown spec or impossible value of sweep.search_space."""
    space, base = cfg.sweep.search_space, cfg.to_dict()
    if not space:
        raise ConfigError("config key 'sweep.search_space' is empty: give at least one key to sweep, "
                          "e.g. {train.lambda_dsm: {loguniform: [0.1, 10]}}")
    for key, spec in space.items():
        where = f"config key 'sweep.search_space' entry '{key}'"
        check_key(cfg, key, where)
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in {**RANGES, **LISTS}):
            raise ConfigError(f"{where}: a spec is one of {sorted({**RANGES, **LISTS})} with its arguments, "
                              f"e.g. {{loguniform: [0.1, 10]}}; got {spec!r}")
        kind, args = next(iter(spec.items()))
        for value in candidates(kind, args, where):
            try:
                load_config(base=base, overrides=[(key, value)])
            except ConfigError as e:
                raise ConfigError(f"{where}: {kind} can give {value!r}, which is refused: {e}") from None


def num_trials(cfg):
    """Trials the sweep makes: sweep.num_samples draws, each crossed with every grid_search value."""
    n = cfg.sweep.num_samples
    for spec in cfg.sweep.search_space.values():
        n *= len(spec.get("grid_search", [None]))
    return n


def param_space(cfg):
    """Tune's param_space for sweep.search_space (checked first): {dotted key: Tune domain or grid}."""
    check_search_space(cfg)
    space = {}
    for key, spec in cfg.sweep.search_space.items():
        kind, args = next(iter(spec.items()))
        space[key] = RANGES[kind](*args) if kind in RANGES else LISTS[kind](list(args))
    return space
