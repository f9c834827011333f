import numpy as np
import pytest

from ctm.networks import tiny_songunet_kwargs
from ctm.student import build_ctm_student
from pipeline.checkpoint import save_checkpoint
from pipeline.config import load_config
from pipeline.evaluation import Setting
from pipeline.evaluation.reuse import STORE_FILE, ResultKeys, ResultStore


def save_student(directory, shift=0.0):
    G = build_ctm_student(**tiny_songunet_kwargs(8, 1))
    state = {k: v + shift for k, v in G.state_dict().items()}
    return str(save_checkpoint(directory, step=3, config=load_config().to_dict(), student_kwargs=G.init_kwargs,
                               student=state, target=state, ema={"0.999": state}, discriminator=None, opt_G=None,
                               opt_D=None, rng={}, data={}).parent)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse")
    return save_student(root / "a"), save_student(root / "b", shift=1.0)


def keys(tmp_path, *overrides):
    return ResultKeys(load_config(overrides=[f"eval.out={tmp_path}", *overrides]))


def test_a_key_changes_with_each_thing_a_result_was_measured_with(tmp_path, checkpoints):
    a, b = checkpoints
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(64), sigma=np.eye(64))
    base = keys(tmp_path).fid(a, Setting(1, 0.0))
    assert keys(tmp_path).fid(a, Setting(1, 0.0)) == base  # the same measurement, the same key
    changed = [keys(tmp_path).fid(b, Setting(1, 0.0)),                            # another checkpoint's bytes
               keys(tmp_path, "eval.ema_rate=0").fid(a, Setting(1, 0.0)),         # other weights of it
               keys(tmp_path).fid(a, Setting(1, 1.0)),                            # another setting
               keys(tmp_path).fid(a, Setting(2, None, 9, 5)),
               keys(tmp_path, "eval.num_samples=999").fid(a, Setting(1, 0.0)),    # sampling
               keys(tmp_path, "eval.seed=1").fid(a, Setting(1, 0.0)),
               keys(tmp_path, "eval.batch_size=100").fid(a, Setting(1, 0.0)),
               keys(tmp_path, "grid.sigma_max=40").fid(a, Setting(1, 0.0)),       # the times the setting resolves to
               keys(tmp_path, "data.max_images=500").fid(a, Setting(1, 0.0)),     # the reference's images
               keys(tmp_path, f"eval.reference_stats={stats}").fid(a, Setting(1, 0.0))]
    assert len({base, *changed}) == len(changed) + 1
    np.savez(stats, mu=np.ones(64), sigma=np.eye(64))  # other statistics in the same file are another reference
    assert keys(tmp_path, f"eval.reference_stats={stats}").fid(a, Setting(1, 0.0)) not in changed
    assert keys(tmp_path, "eval.out=elsewhere", "eval.num_actors=3").fid(a, Setting(1, 0.0)) == base  # not measured
    assert keys(tmp_path).teacher() != keys(tmp_path, "teacher.components=3").teacher()
    assert keys(tmp_path).likelihood(a) != keys(tmp_path, "eval.likelihood_samples=5").likelihood(a)


def test_the_feature_network_is_part_of_the_key(tmp_path, checkpoints, monkeypatch):
    import pipeline.evaluation.reuse as reuse
    base = keys(tmp_path).fid(checkpoints[0], Setting(1, 0.0))
    monkeypatch.setattr(reuse, "features_identity", lambda cfg: {"name": "digits-mlp-64", "digest": "retrained"})
    assert keys(tmp_path).fid(checkpoints[0], Setting(1, 0.0)) != base


def test_the_store_round_trips_results_with_their_previews(tmp_path):
    store = ResultStore(tmp_path)
    preview = np.arange(16, dtype=np.float16).reshape(1, 1, 4, 4)
    store.results["k1"] = {"fid": 1.5, "setting": Setting(2, 0.5, sigmas=(1.0,)).to_dict(), "preview": preview}
    store.results["k2"] = {"nll_bpd": 3.0, "model": {"checkpoint": "c"}}
    store.save()
    back = ResultStore(tmp_path).results
    assert (tmp_path / STORE_FILE).is_file() and not list(tmp_path.glob(".*tmp*"))
    assert back["k1"]["fid"] == 1.5 and back["k1"]["setting"]["sigmas"] == [1.0]
    assert back["k1"]["preview"].dtype == np.float16 and np.array_equal(back["k1"]["preview"], preview)
    assert back["k2"] == {"nll_bpd": 3.0, "model": {"checkpoint": "c"}}
