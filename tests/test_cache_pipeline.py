"""The cache through Ray Data on the digits mixture teacher: generate, reproduce, extend, refuse, read back."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import pipeline.datasets
import pipeline.teachers
from ctm.digits import fit_digits_teacher, load_digits_images
from ctm.schedule import joint_nk, karras_grid, sample_n
from ctm.solver import heun_trajectory
from ctm.teachers import GaussianMixtureTeacher
from pipeline import memo
from pipeline.cache import (CacheMismatchError, CacheNotFoundError, DamagedShardError, cache_dataset,
                            config_key_fields, generate_cache, open_cache)
from pipeline.cache.generate import record_spec
from pipeline.cache.manifest import cache_key
from pipeline.cache.records import make_records, record_seed
from pipeline.config import load_config
from pipeline.datasets import load_dataset

N, RECORDS, R = 8, 1200, 256


def config(root, teacher_path, *overrides):
    return load_config(overrides=[f"cache.root={root}", f"teacher.path={teacher_path}", f"grid.N={N}",
                                  f"cache.num_records={RECORDS}", f"cache.records_per_shard={R}",
                                  "cache.batch_size=128", "cache.num_actors=1", "cache.cpus_per_actor=0.5",
                                  *overrides])


def quiet(*_):
    pass


def refuse(*args, **kwargs):
    raise AssertionError("decoded or built what the driver only names")


def digits_folder(root, count):
    """The first `count` digits as 8×8 greyscale PNGs, one subfolder per class."""
    images, labels = load_digits_images()
    for i in range(count):
        path = root / str(labels[i]) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round((images[i, 0] + 1) * 127.5).astype(np.uint8)).save(path)
    return root


@pytest.fixture(scope="module", autouse=True)
def digest_memo(tmp_path_factory):
    """Digests and teacher identities are remembered in this module's own folder."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("CTM_DIGEST_CACHE", str(tmp_path_factory.mktemp("memo")))
        yield


def snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "digits_gmm3.npz"
    fit_digits_teacher(n_components=3).save(path)
    return path


@pytest.fixture(scope="module")
def cache(ray_cluster, tmp_path_factory, teacher_path):
    return generate_cache(config(tmp_path_factory.mktemp("cache"), teacher_path), log=quiet)


@pytest.fixture
def cache_copy(cache, tmp_path):
    shutil.copytree(cache.url, tmp_path / cache.key)
    return open_cache(tmp_path / cache.key)


def test_the_default_key_is_the_one_before_streaming():
    """The shipped teacher start and every existing digits cache are found by these digests."""
    fields = config_key_fields(load_config())
    assert fields["data"]["digest"] == "893ab8e80fa66be9d60576ef7f7d9b4ea763e06b49e2644896aee8aec43d8aca"
    assert cache_key(fields) == "ff1a3570de3d3ec3c70a"


def test_the_driver_names_data_and_teacher_without_decoding_or_building_them(tmp_path, teacher_path, monkeypatch):
    cfg = config(tmp_path / "caches", teacher_path, "data.name=folder",
                 f"data.path={digits_folder(tmp_path / 'digits', 50)}")
    monkeypatch.setattr(pipeline.datasets.FolderImages, "_read", refuse)  # no image is decoded, the files are hashed
    monkeypatch.setattr(pipeline.datasets, "to_float", refuse)
    fields = config_key_fields(cfg)  # the teacher file is loaded once: this machine has not seen it yet
    assert fields["data"]["name"] == "folder" and fields["data"]["num_images"] == 50
    monkeypatch.setattr(memo, "_here", {})  # another process on this machine
    monkeypatch.setattr(pipeline.teachers, "build_teacher", refuse)
    assert config_key_fields(cfg) == fields
    with pytest.raises(CacheNotFoundError, match="no cache for this configuration"):
        open_cache(cfg.cache.root, cfg)


def test_actors_read_a_folder_record_by_record_into_the_bytes_of_the_whole_array(ray_cluster, tmp_path,
                                                                                 teacher_path):
    folder = digits_folder(tmp_path / "digits", 120)
    cfg = config(tmp_path / "caches", teacher_path, "data.name=folder", f"data.path={folder}",
                 "cache.num_records=100", "cache.records_per_shard=50")
    cache = generate_cache(cfg, log=quiet)
    images, labels, _ = load_dataset(cfg.data)
    with torch.no_grad():
        expected = make_records(record_spec(cfg, cache.manifest["key_fields"]), GaussianMixtureTeacher.load(teacher_path),
                                images, labels, range(100), batch_size=128)
    assert expected["flip"].any()  # folders are flipped (digits never are)
    for e in cache.shards:
        shard = cache.read_shard(e)
        for name, a in expected.items():
            np.testing.assert_array_equal(shard[name], a[e["start"]:e["stop"]].astype(shard[name].dtype), name)


def test_cache_holds_every_record_once(cache):
    assert cache.num_records == RECORDS and cache.N == N and cache.K == N - 1 and cache.image_shape == (1, 8, 8)
    assert [(e["start"], e["stop"]) for e in cache.shards] == [(0, 256), (256, 512), (512, 768), (768, 1024),
                                                               (1024, 1200)]
    assert cache.verify() == {"ok": True, "checked": 5, "damaged": [], "missing": [], "leftovers": []}
    torch.testing.assert_close(cache.grid, karras_grid(N), rtol=0, atol=0)


def test_a_record_equals_an_independent_heun_solve(cache, teacher_path):
    teacher = GaussianMixtureTeacher.load(teacher_path)
    images, labels = load_digits_images()
    shard = cache.read_shard(cache.shards[4])
    for row in (0, 37, 175):
        i = int(shard["index"][row])
        g = torch.Generator().manual_seed(record_seed(0, i))  # the documented stream: n, data index, flip coin, z
        n, j = int(sample_n(1, N, N - 1, g)), int(torch.randint(len(images), (1,), generator=g))
        torch.rand(1, generator=g)  # the flip coin (digits are never flipped)
        z = torch.randn(1, 8, 8, generator=g)
        assert shard["seed"][row] == record_seed(0, i) and shard["start"][row] == n and shard["data_index"][row] == j
        np.testing.assert_array_equal(shard["x0"][row], images[j])
        assert shard["label"][row] == labels[j]
        x_t = torch.from_numpy(images[j]).double()[None] + karras_grid(N)[n] * z.double()
        solve = heun_trajectory(teacher.denoise, x_t, karras_grid(N)[n:])[:, 0].numpy()
        assert np.isnan(shard["states"][row, :n]).all()
        np.testing.assert_allclose(shard["states"][row, n:], solve, rtol=2 ** -10, atol=2 ** -14)  # float16 rounding


def test_another_batch_size_and_actor_count_give_the_same_bytes(cache, teacher_path, tmp_path):
    other = generate_cache(config(tmp_path, teacher_path, "cache.batch_size=50", "cache.num_actors=2"), log=quiet)
    assert other.key == cache.key
    assert [(e["start"], e["checksums_sha256"]) for e in other.shards] == \
           [(e["start"], e["checksums_sha256"]) for e in cache.shards]


def test_extending_writes_only_new_records(cache_copy, teacher_path):
    folder = Path(cache_copy.store.path)
    before = {e["shard"]: e for e in cache_copy.shards}
    complete = {p: s for p, s in snapshot(folder).items() if any(e["path"] in str(p) for e in cache_copy.shards[:4])}
    short = cache_copy.read_shard(before[4])
    grown = generate_cache(config(folder, teacher_path, f"cache.num_records={RECORDS + 200}"), log=quiet)
    assert [(e["start"], e["stop"]) for e in grown.shards][4:] == [(1024, 1280), (1280, 1400)]
    assert [e["path"] for e in grown.shards[:4]] == [before[s]["path"] for s in range(4)]
    assert {p: s for p, s in snapshot(folder).items() if p in complete} == complete
    rewritten = grown.read_shard(grown.shards[4])
    for name, a in short.items():
        np.testing.assert_array_equal(rewritten[name][:176], a)  # the short shard's records, bit for bit
    report = grown.verify()
    assert report["ok"] and report["leftovers"] == []  # the superseded short shard is gone


def test_a_mismatched_config_is_refused_and_nothing_changes(cache_copy, teacher_path):
    folder = cache_copy.store.path
    before = snapshot(Path(folder))
    wrong = config(folder, teacher_path, "cache.dtype=float32", "grid.rho=5")
    with pytest.raises(CacheMismatchError, match=r"cache.dtype: cache has 'float16', config gives 'float32'.*"
                                                 r"grid.rho: cache has 7.0, config gives 5.0"):
        generate_cache(wrong, log=quiet)
    with pytest.raises(CacheMismatchError, match="cache.dtype"):
        open_cache(folder, wrong)
    with pytest.raises(CacheNotFoundError, match=f"{cache_copy.key} differs in cache.dtype, grid.rho"):
        open_cache(os.path.dirname(folder), wrong)
    assert snapshot(Path(folder)) == before
    assert open_cache(os.path.dirname(folder), config(folder, teacher_path)).key == cache_copy.key


def test_a_corrupted_chunk_is_named_by_verify_and_refused_by_reads(cache_copy):
    folder = Path(cache_copy.store.path)
    states = folder / cache_copy.shards[2]["path"] / "states/c/0/0/0/0/0"
    data = bytearray(states.read_bytes())
    data[100] ^= 0x01
    states.write_bytes(bytes(data))
    (folder / cache_copy.shards[3]["path"] / "x0/c/0/0/0/0").unlink()
    report = cache_copy.verify()
    assert not report["ok"] and [d["shard"] for d in report["damaged"]] == [2, 3]
    assert report["damaged"][0]["problems"] == ["object states/c/0/0/0/0/0 fails its sha256 checksum"]
    assert report["damaged"][1]["problems"] == ["missing object x0/c/0/0/0/0"]
    with pytest.raises(DamagedShardError, match="shard 2"):
        cache_copy.read_shard(cache_copy.shards[2])
    for pairs in (False, True):  # Ray re-raises the read task's error as a DamagedShardError
        with pytest.raises(DamagedShardError, match=r"shard [23] \(records"):
            cache_dataset(cache_copy, pairs=pairs).materialize()


def test_pairs_follow_the_official_joint_law_and_match_the_states(cache):
    rows = cache_dataset(cache, pairs=True, epoch=0, seed=0).take_all()
    index = np.array([r["index"] for r in rows])
    assert sorted(index.tolist()) == list(range(RECORDS))
    n, k = np.array([r["n"] for r in rows]), np.array([r["k"] for r in rows])
    assert ((k >= 1) & (n + k <= N - 1)).all()
    counts = np.zeros((N, N))
    np.add.at(counts, (n, k), 1)
    probs = joint_nk(N, N - 1).numpy()
    assert counts[probs == 0].sum() == 0
    assert stats.chisquare(counts[probs > 0], probs[probs > 0] * RECORDS).pvalue > 1e-3
    shard = cache.read_shard(cache.shards[1])
    for r in rows:
        if 256 <= r["index"] < 512:
            i = r["index"] - 256
            assert r["x_t"].dtype == np.float32 and r["x_t"].shape == (1, 8, 8)
            np.testing.assert_array_equal(r["x_t"], shard["states"][i, r["n"]])
            np.testing.assert_array_equal(r["x_u"], shard["states"][i, r["n"] + r["k"]])
            np.testing.assert_array_equal(r["x0"], shard["x0"][i])
            assert r["n"] == shard["start"][i] and r["label"] == shard["label"][i]
    again = {r["index"]: r["k"] for r in cache_dataset(cache, pairs=True, epoch=0, seed=0).take_all()}
    other = {r["index"]: r["k"] for r in cache_dataset(cache, pairs=True, epoch=1, seed=0).take_all()}
    assert all(again[i] == kk for i, kk in zip(index, k))
    assert sum(other[i] != kk for i, kk in zip(index, k)) > RECORDS // 4


def test_whole_records_carry_the_trajectory(cache):
    rows = cache_dataset(cache, pairs=False).take(300)
    for r in rows:
        assert r["states"].shape == (N, 1, 8, 8) and r["states"].dtype == np.float32
        assert np.isnan(r["states"][:r["n"]]).all() and np.isfinite(r["states"][r["n"]:]).all()
        assert {"x0", "label", "index", "seed", "data_index", "flip"} <= set(r)
