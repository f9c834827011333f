import numpy as np
import pytest
import torch
from cleanfid.fid import compute_fid

from ctm.digits import load_digits_images
from ctm.networks import tiny_songunet_kwargs
from ctm.student import build_ctm_student
from pipeline.checkpoint import load_student, save_checkpoint
from pipeline.config import load_config
from pipeline.evaluation import EvaluatorPool, ExactFlowMap, Setting, gamma_settings
from pipeline.evaluation.features import digits_features, to_pixels
from pipeline.evaluation.settings import sample_batches
from pipeline.teachers import build_teacher

NUM, BATCH = 200, 100


def save_untrained_checkpoint(directory, cfg, step=7):
    G = build_ctm_student(**tiny_songunet_kwargs(8, 1))
    state = G.state_dict()
    return save_checkpoint(directory, step=step, config=cfg.to_dict(), student_kwargs=G.init_kwargs, student=state,
                           target=state, ema={"0.999": state}, discriminator=None, opt_G=None, opt_D=None, rng={},
                           data={}).parent


@pytest.fixture(scope="module")
def setup(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    cfg = load_config(overrides=[f"eval.num_samples={NUM}", f"eval.batch_size={BATCH}", "eval.num_actors=2",
                                 "eval.likelihood_samples=4", f"eval.out={root / 'out'}"])
    pool = EvaluatorPool(cfg)
    yield cfg, pool, save_untrained_checkpoint(root / "ckpt", cfg)
    pool.shutdown()


def test_actor_fid_equals_cleanfid_compute_fid_on_the_same_images(setup, tmp_path):
    import ray
    cfg, pool, ckpt = setup
    ref = pool.submit(ckpt, [Setting(2, 0.0)])
    assert isinstance(ref, ray.ObjectRef)  # handed over without waiting
    result, = ray.get(ref)
    G, _ = load_student(ckpt)
    images = torch.cat(list(sample_batches(G, Setting(2, 0.0), cfg.grid.grid(), NUM, BATCH, cfg.eval.seed, (1, 8, 8))))
    replay = iter(to_pixels(images).split(BATCH))
    for i, img in enumerate(to_pixels(torch.from_numpy(load_digits_images()[0])).numpy()):
        np.save(tmp_path / f"{i:04d}.npy", img.transpose(1, 2, 0))
    fs = digits_features()
    expected = compute_fid(gen=lambda z: next(replay), fdir2=str(tmp_path), mode="clean", num_workers=0,
                           batch_size=BATCH, device=torch.device("cpu"), num_gen=NUM, z_dim=1,
                           custom_feat_extractor=fs.extractor, custom_fn_resize=fs.resize, verbose=False)
    assert result["fid"] == pytest.approx(expected, rel=1e-5)
    assert result["model"] == {"checkpoint": str(ckpt), "step": 7, "ema_rate": 0.999}
    assert result["setting"]["t_steps"][1] == pytest.approx(2.5152, rel=1e-3) and result["num_samples"] == NUM
    assert result["features"]["name"] == "digits-mlp-64" and result["reference"]["count"] == 1797
    assert result["real_vs_real"]["n"] == NUM and result["preview"].shape == (64, 1, 8, 8)


def test_repeats_score_the_mean_over_consecutive_latent_seeds(tmp_path):
    """eval.repeats = 3: each FID (the student's and the teacher's) is the mean of the FIDs that eval.seed = 4, 5 and 6
    give one at a time, and the report names the draws."""
    from pipeline.evaluation.actors import Evaluator
    from pipeline.evaluation.report import write_report
    common = [f"eval.num_samples={NUM}", f"eval.batch_size={BATCH}", f"eval.out={tmp_path / 'out'}"]
    cfg = load_config(overrides=[*common, "eval.seed=4", "eval.repeats=3"])
    ckpt = save_untrained_checkpoint(tmp_path / "ckpt", cfg)
    evaluator = Evaluator(cfg)
    result, = evaluator.score(ckpt, [Setting(1, 0.0)])
    teacher = evaluator.score_teacher()
    singles = [Evaluator(load_config(overrides=[*common, f"eval.seed={s}"])) for s in (4, 5, 6)]
    assert result["fids"] == [e.score(ckpt, [Setting(1, 0.0)])[0]["fid"] for e in singles]
    assert teacher["fids"] == [e.score_teacher()["fid"] for e in singles]
    for r in (result, teacher):
        assert r["fid"] == pytest.approx(np.mean(r["fids"])) and len(set(r["fids"])) == 3 and r["repeats"] == 3
    assert result["real_vs_real"]["fds"] == [e.reference().real_vs_real["fd"] for e in singles]
    report = write_report({"results": [result], "teacher": teacher}, tmp_path / "report").read_text()
    assert "3 latent draws (seeds 4 to 6)" in report
    assert f"{result['fid']:.4g} ({min(result['fids']):.3g}–{max(result['fids']):.3g})" in report


def test_exact_flow_map_scores_alike_at_every_nfe_near_the_teacher_and_far_below_an_untrained_student(setup):
    import ray
    cfg, pool, ckpt = setup
    flow = ExactFlowMap(build_teacher(cfg))
    refs = [pool.submit(flow, gamma_settings([1, 2], [0.0])), pool.submit(flow, gamma_settings([4], [0.0])),
            pool.submit(ckpt, gamma_settings([1], [0.0]))]
    teacher = ray.get(pool.submit_teacher())
    *exact, untrained = [r["fid"] for batch in ray.get(refs) for r in batch]
    # γ = 0 composes exact jumps: every NFE gives the same samples from the same latents
    assert max(exact) - min(exact) < 1e-2 * min(exact)
    assert teacher["setting"]["nfe"] == 34 and abs(exact[0] - teacher["fid"]) < 0.25 * teacher["fid"]
    assert untrained > 10 * max(exact)


def test_likelihood_of_a_checkpoint(setup):
    import ray
    cfg, pool, ckpt = setup
    nll = ray.get(pool.submit_likelihood(ckpt))
    assert np.isfinite(nll["nll_bpd"]) and nll["nll_bpd"] > 0 and nll["data"]["images"] == 4
    assert nll["model"]["step"] == 7 and "Hutchinson" in nll["estimator"]


def test_bad_checkpoint_is_a_clear_error(setup, tmp_path):
    import ray
    _, pool, _ = setup
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        ray.get(pool.submit(tmp_path / "missing", [Setting(1, 0.0)]))
