"""The generation stage: missing shards → Ray Data teacher actors (Heun on the CTM grid) → the shard Datasink.

    generate_cache(cfg)   # creates, resumes or extends the cache that cfg names; returns the TrajectoryCache

Only shards absent from the manifest are solved, so a rerun after a crash (kill -9 anywhere) finishes the cache
without touching complete shards, and a larger cache.num_records extends it. A cache whose manifest is missing (or,
with repair, damaged) adopts its shards that verify; listed shards that fail the quick check stop the run (repair
rewrites them).

Memory per process is bounded by a shard, not the dataset: the driver names the data by its files
(`dataset_identity`) and each actor opens the dataset itself and reads the images of its shard's records only.
"""

import copy

import numpy as np
import ray
import torch

from ctm.teachers import COMPUTE_DTYPES
from pipeline.datasets import dataset_identity, hflip_enabled, open_dataset
from pipeline.resources import pool_request
from pipeline.storage import Folder
from pipeline.teachers import build_teacher, check_images_fit_teacher, configured_teacher_identity

from .cache import TrajectoryCache, cache_folder, read_manifest, remove_leftovers
from .errors import DamagedManifestError
from .manifest import check_fields, key_fields, missing_shards, new_manifest
from .records import RecordSpec, make_records
from .recover import adopt_shards
from .sink import MANIFEST, ManifestCommitter, ShardSink
from .verify import damaged_error


class TeacherFactory:
    """device -> the config's teacher. A mixture travels by value (a refit on another node could differ); a network
    is built by each actor, never on the driver, which takes its identity from the file."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.mixture = build_teacher(cfg) if cfg.teacher.kind == "gmm" else None

    def __call__(self, device):
        if self.mixture is not None:
            return copy.deepcopy(self.mixture).to(device)
        return build_teacher(self.cfg, device)

    def identity(self):
        return self.mixture.identity() if self.mixture is not None else configured_teacher_identity(self.cfg)


def record_spec(cfg, fields):
    t = fields["teacher"]
    return RecordSpec(seed=cfg.cache.seed, grid=cfg.grid.grid(), mode=cfg.cache.mode,
                      image_shape=tuple(t["image_shape"]), hflip=hflip_enabled(cfg.data),
                      conditional=fields["data"]["use_labels"], label_dim=t["label_dim"],
                      dtype=cfg.cache.dtype, compute_dtype=str(COMPUTE_DTYPES[t["kind"]]).removeprefix("torch."))


class ShardSolver:
    """Ray Data actor: the teacher on its device and the dataset opened for reading by index; each call turns one
    (shard, shard_start, shard_stop) row into that shard's records, reading only their images."""

    def __init__(self, cfg, teacher_factory, fields, fingerprint, device):
        self.device, self.batch_size = device, cfg.cache.batch_size
        self.teacher = teacher_factory(device)
        digest = self.teacher.identity()["digest"]
        if digest != fields["teacher"]["digest"]:
            raise RuntimeError(f"the teacher built on this node has weights digest {digest[:12]}, the driver's "
                               f"{fields['teacher']['digest'][:12]}: every node must read the same teacher.path")
        self.source = self.labels = None
        if cfg.cache.mode == "data":
            self.source = open_dataset(cfg.data)
            self.labels = self.source.labels
            if self.source.fingerprint() != fingerprint:
                raise RuntimeError(f"data.path on this node holds other images than on the driver (fingerprint "
                                   f"{self.source.fingerprint()[:12]} vs {fingerprint[:12]}: names, sizes or labels "
                                   "differ)")
        self.spec = record_spec(cfg, fields)

    def __call__(self, batch):
        if len(batch["shard"]) != 1:
            raise ValueError(f"ShardSolver takes one shard per call (batch_size=1), got {len(batch['shard'])}")
        shard, start, stop = (int(batch[k][0]) for k in ("shard", "shard_start", "shard_stop"))
        with torch.no_grad():
            records = make_records(self.spec, self.teacher, self.source, self.labels, range(start, stop),
                                   self.batch_size, self.device)
        return {"shard": np.array([shard]), "shard_start": np.array([start]), "shard_stop": np.array([stop]),
                **{name: a[None] for name, a in records.items()}}


def prepare(cfg, teacher_id, repair=False, log=print):
    """(store, manifest, key fields, the dataset's fingerprint or None) of the cache cfg names: found (its shards
    adopted when the manifest is missing, or damaged and repair is asked), checked, cleaned of leftovers."""
    data_id = fingerprint = None
    if cfg.cache.mode == "data":
        source = open_dataset(cfg.data)
        check_images_fit_teacher(teacher_id, cfg.data, source.image_shape, source.labels)
        data_id, fingerprint = dataset_identity(cfg.data, source), source.fingerprint()
    fields = key_fields(cfg, teacher_id, data_id)
    store = cache_folder(Folder(cfg.cache.root, cfg.cache.storage_options), fields)
    try:
        manifest = read_manifest(store)
    except DamagedManifestError:
        if not repair:
            raise
        log(f"[cache] {store.join_url(MANIFEST)} cannot be read: rebuilding it from the shards that verify")
        manifest = None
    if manifest is None:
        manifest = adopt_shards(store, new_manifest(fields, cfg.cache.records_per_shard, cfg.grid.grid().t.tolist(),
                                                    teacher_id["image_shape"], cfg.to_dict()), log)
    else:
        check_fields(manifest, fields, store.url)
        manifest = _drop_damaged(store, manifest, log) if repair else _refuse_damaged(store, manifest)
    if manifest["records_per_shard"] != cfg.cache.records_per_shard:
        log(f"[cache] keeping this cache's records_per_shard={manifest['records_per_shard']} "
            f"(config asks {cfg.cache.records_per_shard}; shard boundaries are fixed when a cache is created)")
    remove_leftovers(store, manifest)
    return store, manifest, fields, fingerprint


def _refuse_damaged(store, manifest):
    """The manifest, after the quick check of its shards; DamagedShardError naming the damaged ones."""
    damaged = TrajectoryCache(store, manifest).verify(full=False)["damaged"]
    if damaged:
        raise damaged_error(store.url, damaged)
    return manifest


def _drop_damaged(store, manifest, log):
    """The manifest without the shards that fail the full check (their records are solved again)."""
    damaged = TrajectoryCache(store, manifest).verify(full=True)["damaged"]
    for d in damaged:
        log(f"[cache] shard {d['shard']} is damaged ({'; '.join(d['problems'])}): it will be rewritten")
    return {**manifest, "shards": [e for e in manifest["shards"] if e["shard"] not in {d["shard"] for d in damaged}]}


def _actor_resources(cfg):
    """map_batches resources: one teacher per GPU (and its pool's custom resource) when the cluster has GPUs."""
    c = cfg.cache
    if ray.cluster_resources().get("GPU", 0) > 0:
        return "cuda", {"num_cpus": c.cpus_per_actor, "num_gpus": c.gpus_per_actor,
                        "resources": pool_request("teacher", c.gpus_per_actor) or None}
    return "cpu", {"num_cpus": c.cpus_per_actor}


def generate_cache(cfg, teacher_factory=None, repair=False, log=print):
    """Create, resume or extend the cache `cfg` names (Ray must be initialised); returns the TrajectoryCache.

    teacher_factory: a picklable `device -> teacher` (default: the config's teacher); its `identity()`, where it has
    one, spares the driver building a teacher for the key. repair: rewrite shards that fail the full `verify` (and
    rebuild a damaged manifest from the shards) instead of refusing them.
    """
    factory = teacher_factory or TeacherFactory(cfg)
    teacher_id = factory.identity() if hasattr(factory, "identity") else factory("cpu").identity()
    store, manifest, fields, fingerprint = prepare(cfg, teacher_id, repair, log)
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
                                                   "fingerprint": fingerprint, "device": device},
                            compute=ray.data.ActorPoolStrategy(size=min(cfg.cache.num_actors, len(rows))), **resources)
        # writers reserve no CPU, since the teacher actors may hold every CPU (writing a shard is light next to
        # solving it), and run one per actor, since each new writer is a new worker process
        try:
            ds.write_datasink(ShardSink(store, manifest["key"], committer), ray_remote_args={"num_cpus": 0},
                              concurrency=min(cfg.cache.num_actors, len(rows)))
        finally:
            ray.kill(committer)
    manifest = read_manifest(store)
    remove_leftovers(store, manifest)
    return TrajectoryCache(store, manifest)
