"""Evaluation actors: each loads the feature set and reference statistics once, then scores any number of models.

`EvaluatorPool(cfg)` starts eval.num_actors Ray actors (eval.gpus_per_actor of a GPU each where the cluster has
GPUs). The first actor computes the reference (or reads it from the on-disk cache) and the others receive it.
`submit(checkpoint, settings)` returns an ObjectRef at once, so training can hand over a checkpoint without waiting.
"""

import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoint import checkpoint_file
from pipeline.datasets import check_dataset
from pipeline.resources import pool_request

from .features import build_features, check_features
from .fid import build_reference, cleanfid_features, fid, progress
from .models import as_model, teacher_heun_batches, teacher_model
from .nll import likelihood_images, student_nll
from .settings import sample_batches

PREVIEW = 64  # samples kept from each setting for the report's grids


class Evaluator:
    """Scores models with FID (clean-fid) at sampling settings, the teacher's own Heun samples, and NLL."""

    def __init__(self, cfg, reference=None):
        self.cfg = cfg
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.features = build_features(cfg, self.device)
        self._reference = reference if reference is not None else build_reference(cfg, self.features, self.device)
        self._loaded = (None, None)
        self.loads, self.scored = 0, 0  # checkpoints read from disk (a schedule search's trials reuse one), settings

    def reference(self):
        return self._reference

    def counts(self):
        """{"loads": checkpoints read from disk, "scored": settings scored} since the actor started."""
        return {"loads": self.loads, "scored": self.scored}

    def _model(self, source):
        """The model `source` names; a checkpoint is loaded once and reused until its file changes."""
        if not isinstance(source, (str, os.PathLike)):
            return as_model(source, self.cfg.eval.ema_rate, self.device)
        file = checkpoint_file(source)
        key = (str(Path(file).resolve()), file.stat().st_mtime_ns, self.cfg.eval.ema_rate)
        if self._loaded[0] != key:
            self._loaded = (key, as_model(file, self.cfg.eval.ema_rate, self.device))
            self.loads += 1
        return self._loaded[1]

    def _score(self, draw, model_info, setting_info):
        """FID of draw(seed) (batches of eval.num_samples samples) against the reference: the mean over eval.seeds()."""
        e, preview = self.cfg.eval, []

        def keep_preview(batches):
            for x in batches:
                if not preview:
                    preview.append(x[:PREVIEW].cpu().half().numpy())
                yield x

        start, fids = time.perf_counter(), []
        for seed in e.seeds():
            feats = cleanfid_features(keep_preview(draw(seed)), e.num_samples, self.features, e.batch_size,
                                      self.device)
            fids.append(fid(feats, self._reference))
        seconds = time.perf_counter() - start
        name = f"step {model_info['step']} of {model_info['checkpoint']}" if "step" in model_info else \
            model_info.get("model", "model")
        draws = f" × {e.repeats} draws" if e.repeats > 1 else ""
        progress(f"[eval] {setting_info['label']}: {e.num_samples} samples{draws} of {name} scored in {seconds:.1f} s")
        return {"model": model_info, "setting": setting_info, "fid": float(np.mean(fids)), "fids": fids,
                "num_samples": e.num_samples, "seed": e.seed, "repeats": e.repeats, "features": self.features.info,
                "reference": self._reference.info, "real_vs_real": self._reference.real_vs_real,
                "seconds": round(seconds, 3), "device": self.device, "preview": preview[0]}

    def score(self, source, settings):
        """One result per setting: FID of eval.num_samples samples against the reference, with what it measured."""
        model, e, grid = self._model(source), self.cfg.eval, self.cfg.grid.grid()
        results = []
        for setting in settings:
            draw = partial(sample_batches, model.G, setting, grid, e.num_samples, e.batch_size,
                           image_shape=model.image_shape, label_dim=model.label_dim, device=self.device)
            results.append(self._score(draw, model.info, setting.to_dict(grid)))
            self.scored += 1
        return results

    def score_teacher(self):
        """The teacher's own FID: Heun along the full N-point grid (2(N−1) NFE) from the same latents."""
        teacher, image_shape, label_dim, info = teacher_model(self.cfg, self.device)
        e, grid = self.cfg.eval, self.cfg.grid.grid()
        draw = partial(teacher_heun_batches, teacher, grid, e.num_samples, e.batch_size, image_shape=image_shape,
                       label_dim=label_dim, device=self.device)
        setting = {"label": f"teacher Heun, N={grid.N}", "tag": "teacher_heun", "nfe": 2 * (grid.N - 1)}
        return self._score(draw, info, setting)

    def likelihood(self, source):
        model = self._model(source)
        images, labels, data_info = likelihood_images(self.cfg)
        result = student_nll(model, images.to(self.device), labels.to(self.device), self.cfg.grid.grid(),
                             self.cfg.eval.seed)
        return {"model": model.info, "data": data_info, **result}


class EvaluatorPool:
    """A pool of evaluation actors sharing one reference; every method returns ObjectRefs except `evaluate`."""

    def __init__(self, cfg, num_actors=None):
        import ray
        e = cfg.eval
        check_features(cfg)  # clear errors here rather than a dead actor
        check_dataset(cfg.data)
        gpus = e.gpus_per_actor if ray.cluster_resources().get("GPU", 0) > 0 else 0
        actor = ray.remote(Evaluator).options(num_cpus=e.cpus_per_actor, num_gpus=gpus,
                                              resources=pool_request("eval", gpus) if gpus else {})
        first = actor.remote(cfg)
        self.reference = ray.get(first.reference.remote())
        shared = ray.put(self.reference)
        self.actors = [first] + [actor.remote(cfg, shared) for _ in range((num_actors or e.num_actors) - 1)]
        self._turn = 0

    def _next_actor(self):
        self._turn = (self._turn + 1) % len(self.actors)
        return self.actors[self._turn]

    def submit(self, source, settings, actor=None):
        """ObjectRef of the results list for a checkpoint path (or Model) at `settings`; returns at once. actor: an
        index (taken modulo the pool's size) picks the actor, as a schedule search's trials do; default: in turn."""
        chosen = self._next_actor() if actor is None else self.actors[actor % len(self.actors)]
        return chosen.score.remote(source, list(settings))

    def submit_teacher(self):
        return self._next_actor().score_teacher.remote()

    def submit_likelihood(self, source):
        return self._next_actor().likelihood.remote(source)

    def evaluate(self, sources, settings, teacher=False, likelihood=False):
        """Every (source, setting) spread over the actors; {"results": [...], "teacher": ..., "likelihood": [...]}.
        settings: one list for every source, or {source: its own list} (a searched schedule per checkpoint)."""
        import ray
        per_source = settings if isinstance(settings, dict) else {source: settings for source in sources}
        refs = [self.submit(source, [setting]) for source in sources for setting in per_source[source]]
        teacher_ref = self.submit_teacher() if teacher else None
        nll_refs = [self.submit_likelihood(source) for source in sources] if likelihood else []
        waiting, started = list(refs), time.perf_counter()
        progress(f"[eval] scoring {len(refs)} setting(s) of {len(sources)} checkpoint(s) on {len(self.actors)} actor(s)")
        while waiting:
            done, waiting = ray.wait(waiting)
            for r in ray.get(done[0]):
                progress(f"[eval] {len(refs) - len(waiting)}/{len(refs)} scored ({r['setting']['label']}: FID "
                         f"{r['fid']:.4g}, {r['num_samples']} samples in {r['seconds']:.1f} s); "
                         f"{time.perf_counter() - started:.0f} s so far")
        return {"results": [r for batch in ray.get(refs) for r in batch],
                "teacher": ray.get(teacher_ref) if teacher else None,
                "likelihood": ray.get(nll_refs)}

    def shutdown(self):
        import ray
        for a in self.actors:
            ray.kill(a)
        self.actors = []
