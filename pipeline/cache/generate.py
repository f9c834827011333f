"""The generation stage: missing shards → Ray Data teacher actors (Heun on the CTM grid) → the shard Datasink.

    generate_cache(cfg)   # creates, resumes or extends the cache that cfg names; returns the TrajectoryCache

Only shards absent from the manifest are solved, so a rerun after a crash (kill -9 anywhere) finishes the cache
without touching complete shards, and a larger cache.num_records extends it.
"""

import copy

import numpy as np
import ray
import torch

from ctm.schedule import karras_grid
from pipeline.datasets import hflip_enabled, load_dataset
from pipeline.resources import pool_request
from pipeline.teachers import build_teacher, teacher_identity

from .cache import TrajectoryCache, locate, remove_leftovers
from .manifest import key_fields, missing_shards, new_manifest
from .records import RecordSpec, make_records
from .shards import shard_problems
from .sink import MANIFEST, ManifestCommitter, ShardSink
from .store import CacheStore


class TeacherFactory:
    """device -> the config's teacher. A mixture travels by value (a refit on another node could differ)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.mixture = build_teacher(cfg) if cfg.teacher.kind == "gmm" else None

    def __call__(self, device):
        if self.mixture is not None:
            return copy.deepcopy(self.mixture).to(device)
        return build_teacher(self.cfg, device)


def record_spec(cfg, fields):
    t = fields["teacher"]
    return RecordSpec(seed=cfg.cache.seed, grid=tuple(karras_grid(cfg.grid.N, cfg.grid.sigma_min, cfg.grid.sigma_max,
                                                                   cfg.grid.rho).tolist()),
                      K=cfg.grid.K_max, mode=cfg.cache.mode, image_shape=tuple(t["image_shape"]),
                      hflip=hflip_enabled(cfg.data), conditional=fields["data"]["use_labels"], label_dim=t["label_dim"],
                      dtype=cfg.cache.dtype, compute_dtype="float64" if t["kind"] == "gmm" else "float32")


class ShardSolver:
    """Ray Data actor: the teacher on its device; each call turns one (shard, shard_start, shard_stop) row into that
    shard's records."""

    def __init__(self, cfg, teacher_factory, fields, device):
        self.device, self.batch_size = device, cfg.cache.batch_size
        self.teacher = teacher_factory(device)
        digest = teacher_identity(self.teacher)["digest"]
        if digest != fields["teacher"]["digest"]:
            raise RuntimeError(f"the teacher built on this node has weights digest {digest[:12]}, the driver's "
                               f"{fields['teacher']['digest'][:12]}: every node must read the same teacher.path")
        self.images = self.labels = None
        if cfg.cache.mode == "data":
            self.images, self.labels, data_id = load_dataset(cfg.data)
            if data_id["digest"] != fields["data"]["digest"]:
                raise RuntimeError(f"data.path on this node holds other images than on the driver (digest "
                                   f"{data_id['digest'][:12]} vs {fields['data']['digest'][:12]})")
        self.spec = record_spec(cfg, fields)

    def __call__(self, batch):
        if len(batch["shard"]) != 1:
            raise ValueError(f"ShardSolver takes one shard per call (batch_size=1), got {len(batch['shard'])}")
        shard, start, stop = (int(batch[k][0]) for k in ("shard", "shard_start", "shard_stop"))
        with torch.no_grad():
            records = make_records(self.spec, self.teacher, self.images, self.labels, range(start, stop),
                                   self.batch_size, self.device)
        return {"shard": np.array([shard]), "shard_start": np.array([start]), "shard_stop": np.array([stop]),
                **{name: a[None] for name, a in records.items()}}


def _check_data(cfg, teacher_id, images, labels):
    if list(images.shape[1:]) != list(teacher_id["image_shape"]):
        raise ValueError(f"data.name: {cfg.data.name} images are {tuple(images.shape[1:])}, the teacher's "
                         f"{tuple(teacher_id['image_shape'])}")
    conditional = teacher_id["label_dim"] > 0 and cfg.data.use_labels
    if conditional and (labels.min() < 0 or labels.max() >= teacher_id["label_dim"]):
        raise ValueError(f"data.use_labels: labels {labels.min()}..{labels.max()} do not fit the teacher's "
                         f"{teacher_id['label_dim']} classes")


def prepare(cfg, teacher, log=print):
    """(store, manifest, key fields) of the cache cfg names: found or created, checked, cleaned of leftovers."""
    teacher_id = teacher_identity(teacher)
    data_id = None
    if cfg.cache.mode == "data":
        images, labels, data_id = load_dataset(cfg.data)
        _check_data(cfg, teacher_id, images, labels)
    fields = key_fields(cfg, teacher_id, data_id)
    store, manifest = locate(CacheStore(cfg.cache.root, cfg.cache.storage_options), fields)
    if manifest is None:
        grid = karras_grid(cfg.grid.N, cfg.grid.sigma_min, cfg.grid.sigma_max, cfg.grid.rho)
        manifest = new_manifest(fields, cfg.cache.records_per_shard, grid.tolist(), teacher_id["image_shape"],
                                cfg.to_dict())
    elif manifest["records_per_shard"] != cfg.cache.records_per_shard:
        log(f"[cache] keeping this cache's records_per_shard={manifest['records_per_shard']} "
            f"(config asks {cfg.cache.records_per_shard}; shard boundaries are fixed when a cache is created)")
    remove_leftovers(store, manifest)
    return store, manifest, fields


def _drop_damaged(store, manifest, log):
    problems = {e["shard"]: shard_problems(store, e, full=True) for e in manifest["shards"]}
    for s, p in problems.items():
        if p:
            log(f"[cache] shard {s} is damaged ({'; '.join(p)}): it will be rewritten")
    return {**manifest, "shards": [e for e in manifest["shards"] if not problems[e["shard"]]]}


def _actor_resources(cfg):
    """map_batches resources: one teacher per GPU (and its pool's custom resource) when the cluster has GPUs."""
    c = cfg.cache
    if ray.cluster_resources().get("GPU", 0) > 0:
        return "cuda", {"num_cpus": c.cpus_per_actor, "num_gpus": c.gpus_per_actor,
                        "resources": pool_request("teacher", c.gpus_per_actor) or None}
    return "cpu", {"num_cpus": c.cpus_per_actor}


def generate_cache(cfg, teacher_factory=None, repair=False, log=print):
    """Create, resume or extend the cache `cfg` names (Ray must be initialised); returns the TrajectoryCache.

    teacher_factory: a picklable `device -> teacher` (default: the config's teacher). repair: rewrite shards that
    fail `verify` instead of refusing them.
    """
    factory = teacher_factory or TeacherFactory(cfg)
    store, manifest, fields = prepare(cfg, factory("cpu"), log)
    if repair:
        manifest = _drop_damaged(store, manifest, log)
    todo = missing_shards(manifest, cfg.cache.num_records)
    covered = sum(e["count"] for e in manifest["shards"])
    manifest = {**manifest, "num_records": max(cfg.cache.num_records, covered), "config": cfg.to_dict()}
    store.write_json(MANIFEST, manifest)
    log(f"[cache] {store.url}: {covered} records in {len(manifest['shards'])} complete shards; "
        f"{len(todo)} shards ({sum(b - a for _, a, b in todo)} records) to generate")
    if todo:
        device, resources = _actor_resources(cfg)
        committer = ManifestCommitter.remote(store, manifest, sum(b - a for _, a, b in todo))
        rows = [{"shard": s, "shard_start": a, "shard_stop": b} for s, a, b in todo]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(ShardSolver, batch_size=1, batch_format="numpy",
                            fn_constructor_kwargs={"cfg": cfg, "teacher_factory": factory, "fields": fields,
                                                   "device": device},
                            compute=ray.data.ActorPoolStrategy(size=min(cfg.cache.num_actors, len(rows))), **resources)
        # writers reserve no CPU, since the teacher actors may hold every CPU (writing a shard is light next to
        # solving it), and run one per actor, since each new writer is a new worker process
        ds.write_datasink(ShardSink(store, manifest["key"], committer), ray_remote_args={"num_cpus": 0},
                          concurrency=min(cfg.cache.num_actors, len(rows)))
        ray.kill(committer)
    manifest = store.read_json(MANIFEST)
    remove_leftovers(store, manifest)
    return TrajectoryCache(store, manifest)
