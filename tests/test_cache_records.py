"""Records: deterministic per-record draws, the per-sample-n Heun, and the read-time (n, k) draws."""

import numpy as np
import pytest
import torch
from scipy import stats

from ctm.schedule import Grid, joint_nk, karras_grid, marginal_n, sample_n
from ctm.seeding import READ_K, READ_N, hash_uniform, record_seed
from ctm.solver import heun_from_starts, heun_trajectory
from pipeline.cache.draws import draw_k, draw_n
from pipeline.cache.records import RecordSpec, draw_record, make_records
from pipeline.config import DataConfig
from pipeline.datasets import load_dataset, open_dataset
from conftest import make_gmm


def spec(mode="data", N=8, K=7, dtype="float16", **kw):
    return RecordSpec(seed=3, grid=Grid(N, K=K), mode=mode, image_shape=kw.get("image_shape", (1, 2, 2)),
                      hflip=kw.get("hflip", True),
                      conditional=kw.get("conditional", False), label_dim=kw.get("label_dim", 0), dtype=dtype,
                      compute_dtype="float64")


def chi2_pvalue(counts, probs):
    keep = probs > 0
    assert counts[~keep].sum() == 0, "drew an impossible value"
    return stats.chisquare(counts[keep], probs[keep] * counts.sum()).pvalue


def test_record_seed_depends_on_seed_and_index_only():
    assert record_seed(0, 5) == record_seed(0, 5)
    seeds = {record_seed(s, i) for s in range(3) for i in range(1000)}
    assert len(seeds) == 3000 and all(0 <= x < 2 ** 63 for x in seeds)


def test_draw_record_is_reproducible_and_follows_its_stream():
    s = spec()
    seed, n, j, flip, label, z = draw_record(s, 17, num_images=100)
    again = draw_record(s, 17, num_images=100)
    assert (seed, n, j, flip, label) == again[:5] and torch.equal(z, again[5])
    g = torch.Generator().manual_seed(record_seed(3, 17))  # the documented order: n, data index, flip coin, z
    assert n == int(sample_n(1, 8, 7, g)) and j == int(torch.randint(100, (1,), generator=g))
    assert flip == bool(torch.rand(1, generator=g) < 0.5)
    assert torch.equal(z, torch.randn(1, 2, 2, generator=g))


def test_noise_mode_starts_at_zero_and_draws_labels_for_conditional_teachers():
    _, n, j, flip, label, _ = draw_record(spec("noise"), 4, num_images=0)
    assert (n, j, flip, label) == (0, -1, False, None)
    labels = [draw_record(spec("noise", conditional=True, label_dim=10), i, 0)[4] for i in range(200)]
    assert set(labels) == set(range(10))


def test_heun_from_starts_equals_one_solve_per_sample_and_leaves_nan_before_n():
    teacher = make_gmm(4, seed=1)
    t = karras_grid(8)
    n = torch.tensor([0, 3, 6, 2, 0])
    x = torch.randn(5, 4, dtype=torch.float64) * t[n][:, None]
    states = heun_from_starts(teacher.denoise, x, n, t)
    for b in range(5):
        assert torch.isnan(states[b, :n[b]]).all()
        alone = heun_trajectory(teacher.denoise, x[b:b + 1], t[n[b]:])[:, 0]
        torch.testing.assert_close(states[b, n[b]:], alone, rtol=1e-12, atol=1e-12)


def test_records_do_not_depend_on_batch_size():
    teacher = make_gmm(4, seed=2, spread=0.8)
    teacher.image_shape = (1, 2, 2)
    images = np.random.default_rng(0).uniform(-1, 1, (50, 1, 2, 2)).astype(np.float32)
    labels = np.arange(50) % 10
    a = make_records(spec(), teacher, images, labels, range(40, 70), batch_size=30)
    b = make_records(spec(), teacher, images, labels, range(40, 70), batch_size=7)
    c = make_records(spec(), teacher, images, labels, range(55, 60), batch_size=2)
    for name in a:
        assert np.array_equal(a[name], b[name], equal_nan=True), name
        assert np.array_equal(a[name][15:20], c[name], equal_nan=True), name


def test_record_start_state_is_x0_plus_t_n_z():
    teacher = make_gmm(4, seed=2)
    teacher.image_shape = (1, 2, 2)
    images = np.random.default_rng(1).uniform(-1, 1, (9, 1, 2, 2)).astype(np.float32)
    s = spec(dtype="float32")
    rec = make_records(s, teacher, images, np.zeros(9, np.int64), range(20), batch_size=8)
    assert rec["states"].dtype == np.float32 and rec["x0"].dtype == np.float32
    for i in range(20):
        seed, n, j, flip, _, z = draw_record(s, i, 9)
        x0 = images[j][..., ::-1] if flip else images[j]
        assert rec["seed"][i] == seed and rec["start"][i] == n and rec["data_index"][i] == j and rec["flip"][i] == flip
        np.testing.assert_array_equal(rec["x0"][i], x0)
        expected = (torch.from_numpy(x0.copy()).double() + s.grid.t[n] * z.double()).float().numpy()
        np.testing.assert_array_equal(rec["states"][i, n], expected)
        assert np.isnan(rec["states"][i, :n]).all() and np.isfinite(rec["states"][i, n:]).all()


def test_records_read_from_an_image_source_are_those_of_the_whole_float_array(tmp_path, monkeypatch):
    monkeypatch.setenv("CTM_DIGEST_CACHE", str(tmp_path / "memo"))
    teacher = make_gmm(12, seed=3)
    teacher.image_shape = (3, 2, 2)
    np.savez(tmp_path / "x.npz", images=np.random.default_rng(4).integers(0, 256, (40, 3, 2, 2), dtype=np.uint8),
             labels=np.arange(40) % 3)
    data = DataConfig(name="imagenet64", path=str(tmp_path / "x.npz"), max_images=25)
    images, labels, _ = load_dataset(data)
    source = open_dataset(data)
    s = spec(image_shape=(3, 2, 2))
    whole = make_records(s, teacher, images, labels, range(10, 50), batch_size=16)
    read = make_records(s, teacher, source, source.labels, range(10, 50), batch_size=16)
    assert whole["flip"].any() and len(set(whole["data_index"].tolist())) < 40  # flips and repeated images
    for name in whole:
        assert whole[name].dtype == read[name].dtype and np.array_equal(whole[name], read[name], equal_nan=True), name


def test_hash_uniform_is_uniform_and_keyed_by_seed_epoch_and_stream():
    index = np.arange(20000)
    u = hash_uniform(0, 0, index, READ_K)
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert np.array_equal(u, hash_uniform(0, 0, index, READ_K))
    others = (hash_uniform(1, 0, index, READ_K), hash_uniform(0, 1, index, READ_K), hash_uniform(0, 0, index, READ_N))
    for other in others:
        assert abs(np.corrcoef(u, other)[0, 1]) < 0.05
    assert np.array_equal(hash_uniform(0, 0, index[7:9], READ_K), u[7:9])  # a record's u ignores the others


def test_read_time_draws_reproduce_the_official_law():
    N, K, draws = 18, 17, 200000
    index = np.arange(draws)
    n = draw_n(index, N, K, seed=0, epoch=0)
    assert chi2_pvalue(np.bincount(n, minlength=N).astype(float), marginal_n(N, K).numpy()) > 1e-3
    k = draw_k(n, index, N, K, seed=0, epoch=0)
    counts = np.zeros((N, K + 1))
    np.add.at(counts, (n, k), 1)
    assert chi2_pvalue(counts.ravel(), joint_nk(N, K).numpy().ravel()) > 1e-3


def test_draw_k_refuses_a_start_without_steps():
    with pytest.raises(ValueError, match="0..N-2"):
        draw_k(np.array([17]), np.array([0]), 18, 17, 0, 0)
