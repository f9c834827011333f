"""One optimiser step in this process (no Ray): micro-batching, the G/D alternation, the official draws, learning."""

import pytest
import torch

from ctm.networks import build_edm_network, tiny_songunet_kwargs
from ctm.schedule import karras_grid, sample_official
from ctm.teachers import EDMTeacher
from pipeline.config import load_config
from pipeline.datasets import load_dataset
from pipeline.teachers import build_teacher
from pipeline.train.data import CachedBatches, OnlineBatches
from pipeline.train.state import build_state, student_kwargs
from pipeline.train.step import CTMStep, micro_batches

GRID = karras_grid(18)


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
    z = (b["x_t"] - b["x0"]) / GRID[b["n"]].float()[:, None, None, None]
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
    """A stand-in for a ray.data.DataIterator: the same batches on every pass."""

    def __init__(self, rows, size):
        self.rows, self.size = rows, size

    def iter_torch_batches(self, batch_size, **shuffle):
        n = len(self.rows["n"])
        for i in range(0, n, self.size):
            yield {k: v[i:i + self.size] for k, v in self.rows.items()}


def test_cached_batches_resume_where_they_stopped():
    """A worker resumed at step s with its stream starting at the checkpoint's epoch continues with the rows an
    uninterrupted worker would take, across pass (epoch) boundaries."""
    M, share = 10, 4
    rows = {"n": torch.arange(M), "k": torch.ones(M, dtype=torch.long), "x0": torch.arange(M).float()}
    straight = CachedBatches(ListShard(rows, 3), share)
    taken = [straight(step)["n"].tolist() for step in range(8)]
    assert taken[2] == [8, 9, 0, 1] and sum(taken, []) == list(range(M)) * 3 + [0, 1]
    for step in (3, 5, 6):
        resumed = CachedBatches(ListShard(rows, 3), share, step, first_epoch=step * share // M, rows_per_epoch=M)
        assert resumed(step)["n"].tolist() == taken[step]


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
    t, s = GRID[n].float(), GRID[j].float()
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
    cfg = load_config(overrides=["student.architecture=teacher", "student.dropout=0.2", "train.distance=l2"])
    kwargs = student_kwargs(cfg, teacher)
    assert kwargs == {**net.init_kwargs, "dropout": 0.2}
    state = build_state(cfg, kwargs, teacher, "cpu")
    G = state.G.state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(G[key], value), key
    assert any("_s." in key for key in set(G) - set(net.state_dict()))
    for copy in (state.G_target, *state.emas.values()):
        assert all(torch.equal(v, G[k]) for k, v in copy.state_dict().items())
