"""The student's start for a teacher without weights to copy (the Gaussian-mixture teacher), cached like the
trajectories: `<cache.root>/teacher-start/<key>.pt` holds the CTMPrecond state dict that `ctm.teacher_start` regressed
onto the teacher's exact denoiser. The key hashes everything that changes those weights (teacher digest, student
architecture, dataset, regression settings, train.seed), so every run and sweep trial that agrees on them starts from
one file, computed once on the driver before any worker starts. The embedded default's start ships with the project
(`teacher_starts/`, rebuilt by `python -m jobs.teacher_start`), as the official code starts from a released teacher.
"""

import hashlib
import io
import json
import time
from pathlib import Path

import torch

from ctm.student import CTMPrecond
from ctm.teacher_start import regress_onto_teacher
from pipeline.storage import Folder
from pipeline.datasets import dataset_identity, open_dataset

FOLDER = "teacher-start"
SHIPPED = Path(__file__).with_name("teacher_starts")  # the embedded default's start, made by `python -m jobs.teacher_start`


def needs_regression(cfg, teacher):
    """A fresh student starts as its teacher by regression when the teacher has no network to copy."""
    return cfg.student.init_from_teacher and teacher.network_kwargs is None


def teacher_start_key(cfg, teacher, kwargs, data_identity):
    s = cfg.student
    fields = {"teacher": teacher.identity()["digest"], "student_kwargs": kwargs, "data": data_identity["digest"],
              "steps": s.init_steps, "batch_size": s.init_batch_size, "lr": s.init_lr, "seed": cfg.train.seed,
              "grid": [cfg.grid.sigma_min, cfg.grid.sigma_max, cfg.grid.rho], "version": 1}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def _locate(cfg, teacher, kwargs):
    """(store, file name, dataset) of this config's start: its folder under cache.root, its name, the dataset opened
    for reading by index."""
    source = open_dataset(cfg.data)
    identity = dataset_identity(cfg.data, source)
    store = Folder(cfg.cache.root, cfg.cache.storage_options).child(FOLDER)
    return store, f"{teacher_start_key(cfg, teacher, kwargs, identity)}.pt", source


def teacher_start_source(cfg, teacher, kwargs):
    """Where `teacher_start` will take the start from, without writing anything (for dry runs)."""
    store, rel, _ = _locate(cfg, teacher, kwargs)
    if store.objects("").get(rel):
        return f"cached at {store.join_url(rel)}"
    if (SHIPPED / rel).is_file():
        return f"the embedded default's, shipped with the project ({rel})"
    return (f"regressed onto the teacher's denoiser before the first step ({cfg.student.init_steps} steps of "
            f"{cfg.student.init_batch_size}), then cached at {store.join_url(rel)}")


def teacher_start(cfg, teacher, kwargs, log=print):
    """The URL of the teacher start for this config: cached under cache.root, else the one shipped with the project
    for the embedded default (copied into the cache), else regressed here and cached."""
    store, rel, source = _locate(cfg, teacher, kwargs)
    if store.objects("").get(rel):
        log(f"[train] teacher start: {store.join_url(rel)} (cached)")
        return store.join_url(rel)
    shipped = SHIPPED / rel
    if shipped.is_file():
        store.write_bytes(rel, shipped.read_bytes())
        log(f"[train] teacher start: the embedded default's, shipped with the project ({shipped.name}; rebuild it with "
            "`python -m jobs.teacher_start`)")
        return store.join_url(rel)
    log(f"[train] teacher start: regressing g(x, σ, s) onto the teacher's denoiser, {cfg.student.init_steps} steps "
        f"of {cfg.student.init_batch_size} (once; cached at {store.join_url(rel)})")
    started = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    G = CTMPrecond(**kwargs)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    labels = torch.as_tensor(source.labels) if cfg.data.use_labels else None
    loss = regress_onto_teacher(G, teacher.denoise, source, cfg.student.init_steps,
                                cfg.student.init_batch_size, cfg.student.init_lr, generator, cfg.grid.grid(), labels,
                                log=lambda line: log(f"[train] {line}"))
    buffer = io.BytesIO()
    torch.save(G.state_dict(), buffer)
    store.write_bytes(rel, buffer.getvalue())
    log(f"[train] teacher start: done in {time.perf_counter() - started:.0f} s, final loss {loss:.4g}")
    return store.join_url(rel)


def load_teacher_start(url, storage_options=None):
    """The state dict at `url` (written by `teacher_start`)."""
    store = Folder(url.rsplit("/", 1)[0], storage_options)
    return torch.load(io.BytesIO(store.read_bytes(url.rsplit("/", 1)[1])), weights_only=True)
