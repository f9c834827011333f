import numpy as np
import pytest
import torch
from cleanfid.fid import fid_from_feats

from ctm.digits import fit_digits_teacher
from pipeline.config import load_config
from pipeline.evaluation.features import digits_features
from pipeline.evaluation.fid import (Reference, build_reference, cleanfid_features, fid, image_batches, real_vs_real,
                                     statistics)


def test_fid_of_a_set_against_itself_is_zero_and_a_shift_adds_its_squared_length():
    feats = np.random.default_rng(0).normal(size=(500, 8))
    reference = Reference(*statistics(feats))
    assert abs(fid(feats, reference)) < 1e-8
    shift = np.arange(8.0) / 10
    assert fid(feats + shift, reference) == pytest.approx(float(shift @ shift), abs=1e-8)


def test_real_vs_real_is_a_disjoint_split_at_the_sample_count():
    feats = np.random.default_rng(1).normal(size=(100, 4))
    r = real_vs_real(feats, 30, seeds=[5])
    assert (r["n"], r["against"]) == (30, 70)
    perm = np.random.default_rng(5).permutation(100)
    assert r["fd"] == pytest.approx(fid_from_feats(feats[perm[:30]], feats[perm[30:]]))
    assert real_vs_real(feats, 1000)["n"] == 50  # at most half of the real images
    several = real_vs_real(feats, 30, seeds=[5, 6, 7])  # eval.repeats: the mean over one split per seed
    assert several["fds"] == [real_vs_real(feats, 30, seeds=[s])["fd"] for s in (5, 6, 7)]
    assert several["fd"] == pytest.approx(np.mean(several["fds"])) and len(set(several["fds"])) == 3


def test_reference_is_computed_once_then_read_from_the_cache(tmp_path):
    cfg = load_config(overrides=["eval.num_samples=400", f"eval.reference_cache={tmp_path}"])
    fs = digits_features()
    first = build_reference(cfg, fs)
    assert len(list(tmp_path.glob("reference-*.npz"))) == 1
    assert first.info["count"] == 1797 and first.real_vs_real["n"] == 400 and first.real_vs_real["fd"] > 0
    second = build_reference(cfg, fs)
    np.testing.assert_array_equal(first.sigma, second.sigma)
    assert second.real_vs_real == first.real_vs_real
    other = build_reference(load_config(overrides=["eval.num_samples=300", f"eval.reference_cache={tmp_path}"]), fs)
    assert other.real_vs_real["n"] == 300 and len(list(tmp_path.glob("reference-*.npz"))) == 2


def test_given_statistics_file_is_used_and_checked(tmp_path):
    mu, sigma = np.zeros(64), np.eye(64)
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma)
    cfg = load_config(overrides=[f"eval.reference_stats={tmp_path / 'ref.npz'}", f"eval.reference_cache={tmp_path}"])
    reference = build_reference(cfg, digits_features())
    np.testing.assert_array_equal(reference.sigma, sigma)
    assert reference.info["source"].endswith("ref.npz") and reference.real_vs_real["fd"] > 0
    np.savez(tmp_path / "bad.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="2048-dim"):
        build_reference(load_config(overrides=[f"eval.reference_stats={tmp_path / 'bad.npz'}",
                                               f"eval.reference_cache={tmp_path}"]), digits_features())
    np.savez(tmp_path / "keys.npz", mean=mu)
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        build_reference(load_config(overrides=[f"eval.reference_stats={tmp_path / 'keys.npz'}",
                                               f"eval.reference_cache={tmp_path}"]), digits_features())


def test_digits_features_tell_a_good_mixture_from_a_bad_one(tmp_path):
    cfg = load_config(overrides=["eval.num_samples=600", f"eval.reference_cache={tmp_path}"])
    fs = digits_features()
    reference = build_reference(cfg, fs)
    scores = {}
    for k in (1, 10):
        x = fit_digits_teacher(k).sample(600, torch.Generator().manual_seed(0))
        scores[k] = fid(cleanfid_features(image_batches(x, 200), 600, fs, 200), reference)
    assert scores[1] > 2.5 * scores[10]  # docs/method.md: 4.09 vs 0.72 at 1,800 samples; 2.75 vs 0.93 at these 600
    assert scores[10] > reference.real_vs_real["fd"] * 0.5
