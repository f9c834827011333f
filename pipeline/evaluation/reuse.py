"""Evaluation results kept and reused: each result is stored in <eval.out>/scored.npz under a key that hashes everything
it was measured with, and an evaluation asks the actors only for the results whose key is not there.

A key holds the model (the checkpoint's sha256 from `checkpoint.sha256` and the EMA rate, or the teacher's identity),
the setting with its jump and landing times, the sample count, batch and seed, the grid, the feature network's digest,
and what the reference statistics are computed from: the dataset's content identity (`dataset_identity`, remembered
per machine) and the digest of `eval.reference_stats`. A change of any of them misses the key and is scored again;
`force=True` scores everything again.

    evaluation = score_with_reuse(cfg, checkpoints, settings, teacher=True, likelihood=False)   # Ray initialised
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.checkpoint import checkpoint_file, checkpoint_sha256
from pipeline.datasets import dataset_identity
from pipeline.export import GRID_KEYS
from pipeline.teachers import configured_teacher_identity

from .actors import EvaluatorPool
from .features import features_identity, file_digest

STORE_FILE = "scored.npz"


def key_of(parts):
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class ResultKeys:
    """The key of each result an evaluation of `cfg` can produce."""

    def __init__(self, cfg):
        e = cfg.eval
        self.cfg = cfg
        reference = {"data": dataset_identity(cfg.data)["digest"],
                     "stats": file_digest(e.reference_stats) if e.reference_stats else None}
        self.alike = {"num_samples": e.num_samples, "batch_size": e.batch_size, "seeds": e.seeds(),
                      "grid": {k: getattr(cfg.grid, k) for k in GRID_KEYS}, "features": features_identity(cfg),
                      "reference": reference}
        self._digests = {}

    def checkpoint(self, checkpoint):
        if checkpoint not in self._digests:
            self._digests[checkpoint] = checkpoint_sha256(checkpoint_file(checkpoint))
        return {"sha256": self._digests[checkpoint], "ema_rate": self.cfg.eval.ema_rate}

    def fid(self, checkpoint, setting):
        return key_of({"kind": "fid", "model": self.checkpoint(checkpoint),
                       "setting": setting.to_dict(self.cfg.grid.grid()),
                       **self.alike})

    def teacher(self):
        model = {"digest": configured_teacher_identity(self.cfg)["digest"], "fast": self.cfg.teacher.fast}
        return key_of({"kind": "teacher_fid", "model": model, **self.alike})

    def likelihood(self, checkpoint):
        e = self.cfg.eval
        held_out = dataclasses.replace(self.cfg.data, path=e.likelihood_path, max_images=None)  # as nll reads it
        images = {"samples": e.likelihood_samples, "held_out": dataset_identity(held_out)["digest"]
                  if e.likelihood_path else None}
        return key_of({"kind": "nll", "model": self.checkpoint(checkpoint), "images": images, **self.alike})


class ResultStore:
    """{key: result} kept in one .npz: each result's JSON (without its preview) and its preview samples."""

    def __init__(self, folder):
        self.path = Path(folder) / STORE_FILE
        self.results = {}
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as f:
                for name in f.files:
                    key, part = name.split(".")
                    entry = self.results.setdefault(key, {})
                    entry.update(json.loads(str(f[name])) if part == "json" else {"preview": f[name]})

    def save(self):
        arrays = {}
        for key, result in self.results.items():
            arrays[f"{key}.json"] = np.array(json.dumps({k: v for k, v in result.items() if k != "preview"},
                                                        default=str))
            if "preview" in result:
                arrays[f"{key}.preview"] = np.asarray(result["preview"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.stem}.tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(self.path)


def score_with_reuse(cfg, checkpoints, settings, teacher=False, likelihood=False, force=False, log=print,
                     start_ray=None):
    """EvaluatorPool.evaluate's {"results", "teacher", "likelihood"}: every (checkpoint, setting) of `settings`
    ({checkpoint: its Settings}), the teacher's FID and each checkpoint's NLL. Each result is taken from
    <eval.out>/scored.npz when its key is there (unless `force`) and scored by a pool of evaluation actors otherwise;
    the pool (and Ray, through `start_ray` where a job starts it lazily) starts only when something is left to score."""
    keys, store = ResultKeys(cfg), ResultStore(cfg.eval.out)
    # (kind, checkpoint, setting, key) of every result asked for
    wanted = [("fid", c, s, keys.fid(c, s)) for c in checkpoints for s in settings[c]]
    wanted += [("teacher", None, None, keys.teacher())] if teacher else []
    wanted += [("nll", c, None, keys.likelihood(c)) for c in checkpoints] if likelihood else []
    todo = [w for w in wanted if force or w[3] not in store.results]
    if len(todo) < len(wanted):
        log(f"[evaluate] reused {len(wanted) - len(todo)} results from {store.path} (--force scores them again)")
    if todo:
        import ray
        if start_ray is not None:
            start_ray()
        log(f"[evaluate] scoring {len(todo)} results on the evaluation actors")
        pool = EvaluatorPool(cfg)
        try:
            refs = [pool.submit(c, [s]) if kind == "fid" else pool.submit_teacher() if kind == "teacher"
                    else pool.submit_likelihood(c) for kind, c, s, _ in todo]
            for (kind, *_, key), scored in zip(todo, ray.get(refs)):
                store.results[key] = scored[0] if kind == "fid" else scored
        finally:
            pool.shutdown()
        store.save()

    def stored(checkpoint, key):  # a reused result names the checkpoint where it is now
        r = store.results[key]
        return r if checkpoint is None else {**r, "model": {**r["model"], "checkpoint": str(checkpoint)}}

    found = {kind: [stored(c, key) for k, c, _, key in wanted if k == kind] for kind in ("fid", "teacher", "nll")}
    return {"results": found["fid"], "teacher": (found["teacher"] or [None])[0], "likelihood": found["nll"]}
