"""One optimiser step in this process (no Ray): micro-batching, the G/D alternation, the official draws, learning."""

import json

import numpy as np
import pytest
import torch
from scipy import stats

import ctm.losses
from ctm.seeding import TRAIN_STEP, generator_for
from ctm.networks import build_edm_network, tiny_songunet_kwargs
from ctm.schedule import (Grid, joint_nkj, k_probs, sample_dsm_sigma, sample_k_given_n, sample_n,
                          sample_official, sample_s_index)
from ctm.teachers import EDMTeacher
from pipeline.config import load_config
from pipeline.datasets import load_dataset
from pipeline.teachers import build_teacher
from pipeline.train.data import (CachedBatches, OnlineBatches, newest_data_position, step_k, stream_epoch,
                                 worker_positions)
from pipeline.train import step as step_module
from pipeline.train.rundir import RunDir
from pipeline.train.state import build_state, student_kwargs
from pipeline.train.step import CTMStep, micro_batches
from test_schedule import chi2_pvalue

GRID = Grid(18)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks on a shared 2-core machine: one torch thread is much faster than two contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    cfg = load_config()
    images, labels, _ = load_dataset(cfg.data)
    return build_teacher(cfg), torch.from_numpy(images), torch.from_numpy(labels)


def config(*overrides):
    return load_config(overrides=["student.architecture=tiny", "train.distance=l2", "train.teacher_mode=online",
                                  "train.batch_size=8", *overrides])


def fresh(cfg, teacher):
    return build_state(cfg, student_kwargs(cfg, teacher), teacher, "cpu")


def grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def test_gradient_is_the_sum_of_micro_batch_means(digits):
    """micro_batch=4 on a batch of 8 back-propagates mean(first 4) + mean(last 4), each with its own adaptive λ:
    the same as two workers' shares summed (what DDP with world_size × loss gives)."""
    teacher, images, labels = digits
    cfg = config("train.micro_batch=4")
    batch = OnlineBatches(images, labels, cfg, GRID)(0)
    state = fresh(cfg, teacher)
    CTMStep(cfg, GRID, teacher)(state, batch)
    total = grads(state.G)
    halves = []
    for rank, half in enumerate(micro_batches(batch, 4)):
        s = fresh(config(), teacher)
        CTMStep(config(), GRID, teacher, rank=rank, world_size=1)(s, half)
        halves.append(grads(s.G))
    assert total.keys() == halves[0].keys()
    for name, g in total.items():
        torch.testing.assert_close(g, halves[0][name] + halves[1][name], rtol=1e-5, atol=1e-8)


def test_gan_stage_alternates_g_and_d_steps(digits):
    """From gan_start on, odd steps update D only (G, θ⁻ and the EMAs stay), even steps update G with the GAN term
    (D's weights stay; its batch-norm statistics move as in any training-mode forward)."""
    teacher, images, labels = digits
    cfg = config("train.gan_start=1")
    state, step = fresh(cfg, teacher), CTMStep(cfg, GRID, teacher)
    source = OnlineBatches(images, labels, cfg, GRID)
    weights = lambda module: {k: p.detach().clone() for k, p in module.named_parameters()}
    moved = lambda before, module: any(not torch.equal(v, weights(module)[k]) for k, v in before.items())
    kinds = []
    for _ in range(3):
        G0, D0, target0 = weights(state.G), weights(state.D), weights(state.G_target)
        stats = step(state, source(state.step))
        kinds.append(("D" if "loss_d" in stats else "G", "loss_g" in stats, moved(G0, state.G), moved(D0, state.D),
                      moved(target0, state.G_target)))
        state.step += 1
    assert kinds == [("G", False, True, False, True),   # before gan_start: CTM + DSM only
                     ("D", False, False, True, False),  # step 1 (odd): D only
                     ("G", True, True, False, True)]    # step 2: G with λ_GAN·L_G


def test_gan_warmup_trains_d_before_g_sees_it(digits):
    """train.gan_warmup: the GAN stage's D steps start at gan_start, G's GAN term only gan_warmup steps later."""
    teacher, images, labels = digits
    cfg = config("train.gan_start=1", "train.gan_warmup=2")
    state, step = fresh(cfg, teacher), CTMStep(cfg, GRID, teacher)
    source = OnlineBatches(images, labels, cfg, GRID)
    kinds = []
    for _ in range(5):
        stats = step(state, source(state.step))
        kinds.append("D" if "loss_d" in stats else "G+GAN" if "loss_g" in stats else "G")
        state.step += 1
    assert kinds == ["G", "D", "G", "D", "G+GAN"]  # step 2 is inside the warm-up (2 < 1 + 2)


def test_online_batches_draw_as_the_official_code(digits):
    """One k per step for every sample; n ~ U{0..N−1−k}; x_t = x0 + t_n·z; two workers' shares are the one-worker
    global batch; a batch is a function of the step alone (so resuming redraws it)."""
    teacher, images, labels = digits
    cfg = config("train.batch_size=16", "train.micro_batch=4", "train.num_workers=2")
    one = OnlineBatches(images, labels, config("train.batch_size=16", "train.micro_batch=4"), GRID)
    shares = [OnlineBatches(images, labels, cfg, GRID, rank=r, world_size=2) for r in (0, 1)]
    ks = set()
    for step in range(30):
        b = one(step)
        assert len(set(b["k"].tolist())) == 1
        k = int(b["k"][0])
        ks.add(k)
        assert (b["n"] >= 0).all() and (b["n"] <= 17 - k).all()
        both = [s(step) for s in shares]
        for key in b:
            assert torch.equal(b[key], torch.cat([both[0][key], both[1][key]]))
        assert torch.equal(b["x0"], images[b["index"]])  # digits are never flipped
    z = (b["x_t"] - b["x0"]) / GRID.t[b["n"]].float()[:, None, None, None]
    assert abs(float(z.std()) - 1) < 0.15
    assert len(ks) > 5
    for key, v in one(7).items():
        assert torch.equal(v, OnlineBatches(images, labels, config("train.batch_size=16", "train.micro_batch=4"),
                                            GRID)(7)[key])


def test_online_batches_visit_every_image_once_per_epoch(digits):
    teacher, images, labels = digits
    cfg = config("train.batch_size=64")
    source = OnlineBatches(images[:256], labels[:256], cfg, GRID)
    seen = torch.cat([source(step)["index"] for step in range(4)])
    assert sorted(seen.tolist()) == list(range(256))
    assert source.position(5) == {"mode": "online", "epoch": 1, "offset": 64}


class ListShard:
    """A stand-in for a ray.data.DataIterator: the same rows on every pass (epoch), in batches of the size asked."""

    def __init__(self, rows):
        self.rows = rows

    def iter_torch_batches(self, batch_size):
        for i in range(0, len(self.rows["n"]), batch_size):
            yield {k: v[i:i + batch_size] for k, v in self.rows.items()}


def cache_rows(M, N, K, seed):
    """M cache rows as the trajectory cache yields them: n from its marginal, k ~ P(k | n); x_t and x_u (1×1×2)
    hold (record index, grid index) of the states they stand for."""
    g = torch.Generator().manual_seed(seed)
    n = sample_n(M, N, K, g)
    k = sample_k_given_n(n, N, K, g)
    index = torch.arange(M)
    state = lambda j: torch.stack([index, j], 1).float().view(M, 1, 1, 2)
    return {"x0": torch.zeros(M, 1, 1, 2), "label": torch.zeros(M, dtype=torch.long), "index": index, "n": n, "k": k,
            "x_t": state(n), "x_u": state(n + k)}


def test_cached_steps_share_one_k_across_micro_batches_and_workers():
    """Every row of a step carries the step's k (a function of train.seed and the step alone), on both workers; each
    row is its record's (x_t, x_u) = (states[n], states[n+k]) and is used once per pass."""
    N, K, share = 18, 17, 8
    workers = [CachedBatches(ListShard(cache_rows(5000, N, K, seed)), share, Grid(N, K=K), seed=3) for seed in (0, 1)]
    used = [[], []]
    for step in range(150):
        k = step_k(3, step, Grid(N, K=K))
        for rank, source in enumerate(workers):
            b = source(step)
            assert b["k"].tolist() == [k] * share and (b["n"] <= N - 1 - k).all()
            assert torch.equal(b["x_t"].flatten(1), torch.stack([b["index"], b["n"]], 1).float())
            assert torch.equal(b["x_u"].flatten(1), torch.stack([b["index"], b["n"] + k], 1).float())
            used[rank] += b["index"].tolist()
    assert len(set(used[0])) == len(used[0]) and len({step_k(3, s, Grid(N, K=K)) for s in range(150)}) > 8
    position = workers[0].position(150)
    assert position["rows"] - position["unused"] == 150 * share and position["rows"] <= 5000


def conditional_pvalue(n, k, j, N, K):
    """Chi-square p-value of the samples' (n, j) given their k against the official law (k is shared by a whole
    step, so its own frequencies are tested over steps, not samples)."""
    counts = np.zeros((N, K + 1, N))
    np.add.at(counts, (np.asarray(n), np.asarray(k), np.asarray(j)), 1)
    law = joint_nkj(N, K).numpy()
    expected = counts.sum((0, 2), keepdims=True) * law / law.sum((0, 2), keepdims=True).clip(1e-300)
    keep = expected > 0
    assert counts[~keep].sum() == 0, "drew an impossible (n, k, j)"
    return stats.chisquare(counts[keep], expected[keep], ddof=int((counts.sum((0, 2)) > 0).sum()) - 1).pvalue


def test_cached_steps_follow_the_official_joint_law():
    """Over many steps the k of the steps follows P(k) ∝ k, and the (n, j) of the samples given k (j: the grid index
    of s, drawn by CTMStep) follow U{0..N−1−k} × U{n+k..N−1}: together the joint law joint_nkj. Taking the next rows
    whose n fits the step's k instead (so that n | k follows the cache's marginal of n) fails the same test."""
    N, K, share, steps = 8, 7, 32, 1500
    cfg = config("grid.N=8", f"train.batch_size={share}", "train.micro_batch=8")
    grid = Grid(N)
    step = CTMStep(cfg, grid)
    rows = cache_rows(100000, N, K, 0)
    source = CachedBatches(ListShard(rows), share, grid, seed=0)
    n, k, j = [], [], []
    for i in range(steps):
        for m, mb in enumerate(micro_batches(source(i), 8)):
            n_, k_, _, _, s = step.times(mb, generator_for(0, i, m, TRAIN_STEP))
            n.append(n_), k.append(k_), j.append((s[:, None] == grid.t.float()).int().argmax(1))
    n, k, j = (torch.cat(a).numpy() for a in (n, k, j))
    step_ks = k[::share]
    assert (k.reshape(steps, share) == step_ks[:, None]).all()
    assert chi2_pvalue(np.bincount(step_ks, minlength=K + 1)[1:], k_probs(K).numpy()) > 1e-3
    assert conditional_pvalue(n, k, j, N, K) > 1e-3
    # the wrong design: the step's k on the next stream rows with n <= N-1-k
    g, stream, wrong = torch.Generator().manual_seed(1), iter(range(len(rows["n"]))), []
    for i in range(steps):
        k_ = step_k(0, i, grid)
        for _ in range(share):
            r = next(r for r in stream if rows["n"][r] <= N - 1 - k_)
            n_ = int(rows["n"][r])
            wrong.append((n_, k_, int(sample_s_index(torch.tensor([n_]), torch.tensor([k_]), N, g))))
    assert conditional_pvalue(*zip(*wrong), N, K) < 1e-6


def test_cached_batches_resume_where_they_stopped():
    """A worker resumed from a checkpoint's position (its stream restarted at stream_epoch) takes the batches an
    uninterrupted worker takes after that checkpoint, across epoch boundaries (both take their positions at the same
    checkpoints); the queues hold at most queue_steps shares each and every pulled row is used or counted unused."""
    N, K, M, share = 6, 5, 40, 4
    rows = cache_rows(M, N, K, 2)
    straight = CachedBatches(ListShard(rows), share, Grid(N, K=K), seed=5, queue_steps=2)
    taken, positions = [], {}
    for step in range(60):
        if step % 7 == 0:
            positions[step] = {"mode": "cached", "workers": [straight.position(step)]}
        taken.append(straight(step))
        assert sum(straight.lengths.values()) <= 2 * share * K
    assert positions[56]["workers"][0]["rows"] > 2 * M  # several epochs
    for step, data in positions.items():
        first = stream_epoch(data, M, 1)
        resumed = CachedBatches(ListShard(rows), share, Grid(N, K=K), seed=5, queue_steps=2,
                                position=data["workers"][0], stream_start=first * M)
        for later in range(step, 60):
            if later % 7 == 0 and later > step:
                assert resumed.position(later) == positions[later]["workers"][0]  # the loop's checkpoints
            b = resumed(later)
            assert all(torch.equal(b[key], taken[later][key]) for key in b)
    end = straight.position(60)
    assert end["rows"] - end["unused"] == 60 * share


def test_data_positions_of_several_workers(tmp_path):
    """The stream starts at the epoch of the worker that had pulled the fewest rows; a resume on another number of
    workers shares the rows out; the driver reads the data.json of the newest checkpoint Ray Train registered (not of
    a newer folder a kill left unregistered)."""
    data = {"mode": "cached", "workers": [{"rows": 250, "unused": 10}, {"rows": 190, "unused": 6}]}
    assert stream_epoch(data, 200, 2) == 1 and stream_epoch(None, 200, 2) == 0
    assert worker_positions(data, 1) == [{"rows": 440, "unused": 16}]
    run = RunDir(str(tmp_path), "r")
    assert newest_data_position(run) == (0, None)
    newer = {"mode": "cached", "workers": [{"rows": 900, "unused": 10}, {"rows": 800, "unused": 6}]}
    for step, text in [(2, json.dumps({"mode": "online", "epoch": 0, "offset": 8})), (4, json.dumps(data)),
                       (6, json.dumps(newer))]:
        (tmp_path / "r" / f"checkpoint_{step:07d}").mkdir(parents=True)
        (tmp_path / "r" / f"checkpoint_{step:07d}" / "data.json").write_text(text)
    results = [{"version": 0, "checkpoint_dir_name": f"checkpoint_{step:07d}", "metrics": {}} for step in (2, 4)]
    (tmp_path / "r" / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"checkpoint_results": results, "checkpoint_report_indices": [0, 1], "latest_checkpoint_result": results[1]}))
    assert newest_data_position(run) == (4, data)


def test_distance_and_adaptive_weights_are_fp32_under_bf16_autocast(digits, monkeypatch):
    """G and θ⁻ under bf16 autocast (forced on the CPU, and the whole step inside torch.autocast('cpu', bf16) too):
    the CTM distance, λ_DSM and λ_GAN are computed with autocast off, in fp32, and equal an fp32 computation on the
    same inputs; D's logits are fp32; the networks did run in bf16."""
    teacher, images, labels = digits
    cfg = config("train.gan_start=0")
    conv = torch.nn.Conv2d(1, 8, 3)  # a feature distance like LPIPS: under autocast its conv runs in bf16
    feature_distance = lambda x, y: (conv(x) - conv(y)).square().flatten(1).mean(1)
    distances, weights, dtypes = [], [], {"G": set(), "D": set()}

    def distance(x, y):
        out = feature_distance(x, y)
        distances.append((x.detach().clone(), y.detach().clone(), out.detach().clone()))
        return out

    def adaptive_weight(loss, other, last_layer, lo, hi, eps=1e-4):
        lam = original(loss, other, last_layer, lo, hi, eps)
        norms = [torch.autograd.grad(f, last_layer, retain_graph=True)[0].double().norm() for f in (loss, other)]
        weights.append((torch.is_autocast_enabled("cpu"), lam, (norms[0] / (norms[1] + eps)).clamp(lo, hi)))
        return lam

    original = ctm.losses.adaptive_weight
    monkeypatch.setattr(ctm.losses, "adaptive_weight", adaptive_weight)
    monkeypatch.setattr(step_module, "build_distance", lambda *paths: distance)
    state, step = fresh(cfg, teacher), CTMStep(cfg, GRID, teacher, amp=True)
    first_conv = next(m for m in state.G.modules() if type(m).__name__ == "Conv2d")  # EDM's own Conv2d
    first_conv.register_forward_hook(lambda m, i, out: dtypes["G"].add(out.dtype))
    state.D.register_forward_hook(lambda m, i, out: dtypes["D"].add(out.dtype))
    batch = OnlineBatches(images, labels, cfg, GRID)(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = step(state, {**batch, "x_u": batch["x_t"]})  # any x_u: no teacher solve needed here
    assert dtypes == {"G": {torch.bfloat16}, "D": {torch.float32}} and "lambda_gan" in stats
    assert len(distances) == 1 and len(weights) == 2  # one micro-batch: d, λ_DSM, λ_GAN
    x, y, out = distances[0]
    assert x.dtype == y.dtype == out.dtype == torch.float32
    torch.testing.assert_close(out, feature_distance(x, y), rtol=1e-6, atol=0)
    for autocast_on, lam, fp64 in weights:
        assert not autocast_on and lam.dtype == torch.float32
        torch.testing.assert_close(lam.double(), fp64, rtol=1e-6, atol=0)


def test_dsm_sigma_follows_the_config_grid(digits):
    """grid.sigma_min/sigma_max/rho reach the DSM σ draw: each micro-batch's σ is the exact half split on that grid."""
    teacher, images, labels = digits
    cfg = config("grid.sigma_min=0.01", "grid.sigma_max=40.0", "grid.rho=5.0", "train.micro_batch=4")
    grid = Grid(18, 0.01, 40.0, 5.0)
    batch = OnlineBatches(images, labels, cfg, grid)(0)
    step, seen = CTMStep(cfg, grid, teacher), []
    dsm = step.dsm_loss
    step.dsm_loss = lambda g, x0, sigma, noise, labels=None: seen.append(sigma) or dsm(g, x0, sigma, noise, labels)
    step(fresh(cfg, teacher), {**batch, "x_u": batch["x_t"]})  # any x_u: no teacher solve needed here
    for i, (mb, sigma) in enumerate(zip(micro_batches(batch, 4), seen)):
        gen = generator_for(cfg.train.seed, 0, i, TRAIN_STEP)
        sample_s_index(mb["n"], mb["k"], 18, gen)  # CTMStep draws s first
        torch.testing.assert_close(sigma, sample_dsm_sigma(4, gen, sigma_min=0.01, sigma_max=40.0, rho=5.0).float(),
                                   rtol=0, atol=0)
        assert (sigma[2:] <= 40.0).all() and (sigma[2:] >= (40 ** 0.2 + 0.7 * (0.01 ** 0.2 - 40 ** 0.2)) ** 5).all()


@pytest.mark.slow
def test_training_reduces_the_flow_map_error(digits):
    """120 steps of online CTM + DSM bring G(x_t, t, s) towards the mixture teacher's exact flow map on held-out
    (x_t, t, s) triples drawn by the official law."""
    torch.set_num_threads(1)
    teacher, images, labels = digits
    cfg = config("train.target_ema=0.99", "train.lr=1e-3")
    state, step = fresh(cfg, teacher), CTMStep(cfg, GRID, teacher)
    source = OnlineBatches(images[:1500], labels[:1500], cfg, GRID)
    g = torch.Generator().manual_seed(1)
    x0 = images[1500:1700]
    _, n, j = sample_official(len(x0), 18, 17, g)
    t, s = GRID.t[n].float(), GRID.t[j].float()
    x_t = x0 + t[:, None, None, None] * torch.randn(x0.shape, generator=g)
    exact = teacher.flow_map(x_t, t, s, rtol=1e-6, atol=1e-6)

    def error():
        with torch.no_grad():
            return float(((state.G(x_t, t, s) - exact) ** 2).mean())

    before = error()
    for _ in range(120):
        step(state, source(state.step))
        state.step += 1
    after = error()
    assert after < 0.6 * before, (before, after)


def test_a_teacher_architecture_student_starts_as_the_teacher():
    """student.architecture=teacher: every teacher weight is copied, the s-path keeps its own init, θ⁻ and the EMAs
    start as G, and student.dropout overrides the network's."""
    net = build_edm_network(**tiny_songunet_kwargs(8, 1))
    teacher = EDMTeacher(net)
    cfg = load_config(overrides=["teacher.kind=edm", "teacher.path=in-memory", "student.architecture=teacher",
                                 "student.dropout=0.2", "train.distance=l2"])
    kwargs = student_kwargs(cfg, teacher)
    assert kwargs == {**net.init_kwargs, "dropout": 0.2}
    state = build_state(cfg, kwargs, teacher, "cpu")
    G = state.G.state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(G[key], value), key
    assert any("_s." in key for key in set(G) - set(net.state_dict()))
    for copy in (state.G_target, *state.emas.values()):
        assert all(torch.equal(v, G[k]) for k, v in copy.state_dict().items())
