"""One optimiser step as the official `CMTrainLoop` takes it (docs/method.md §3).

A worker's share of the global batch is cut into micro-batches; each micro-batch's loss is its mean (adaptive λ's
per micro-batch), and the gradients of all micro-batches of the global batch are summed: each worker back-propagates
world_size × its micro-batch means and DDP averages over workers, so the update does not depend on how the global
batch is spread over workers (the official code sums per GPU and averages over GPUs). Once the GAN stage has started
(step >= train.gan_start) odd steps update D only and even steps G (g_learning_period = 2; the counter counts both);
G's loss takes its GAN term once D has had train.gan_warmup steps of the stage (official: 0).
The target θ⁻ and the evaluation EMAs follow G after each G step.

Precision: G and θ⁻ run under bf16 autocast on CUDA (fp32 on the CPU); everything else in fp32 with autocast off:
the distance d (the official LPIPS runs in fp32), the adaptive λ's, the DSM weighting and D.

Every random draw of a micro-batch (s, the DSM σ and noise, dropout and DiffAugment) comes from seeds made of
(train.seed, step, global micro-batch index), so a resumed run redraws exactly what it would have drawn, and one
worker sees the same draws as two workers sharing the same global batch.

A step whose loss terms or gradients are not finite raises NonFiniteError before its update (the loop stops there).
"""

import contextlib
import math

import torch

from ctm.distances import build_distance
from ctm.losses import CTMLoss, DSMLoss
from ctm.seeding import TRAIN_STEP, TRAIN_TORCH, generator_for, seed_for
from ctm.training import discriminator_objective, ema_update, generator_objective, heun_segment
from pipeline.train.state import unwrap


class NonFiniteError(ValueError):
    """A step whose loss or gradient is not finite (or a state that is not, at a checkpoint): the run stops there.
    Every draw is seeded, so a retry would compute the same step again; Ray Train does not retry it."""


def nonfinite_gradients(modules):
    """Whether any gradient of `modules` holds a NaN or an infinity (by the largest magnitude, which unlike the 2-norm
    cannot overflow while every gradient is finite)."""
    grads = [p.grad for m in modules if m is not None for p in m.parameters() if p.grad is not None]
    return bool(grads) and not torch.stack(torch._foreach_norm(grads, math.inf)).max().isfinite().item()


def micro_batches(batch, size):
    """Split a batch dict of (B, ...) tensors into dicts of `size` rows."""
    B = len(next(iter(batch.values())))
    if B % size:
        raise ValueError(f"a batch of {B} rows does not split into micro-batches of {size}: train.micro_batch must "
                         "divide each worker's share train.batch_size / train.num_workers")
    return [{key: v[i:i + size] for key, v in batch.items()} for i in range(0, B, size)]


def is_discriminator_step(step, gan_start):
    """In the GAN stage odd steps train D only (g_learning_period = 2)."""
    return gan_start is not None and step >= gan_start and step % 2 == 1


def learning_rate(step, t):
    """G's learning rate at `step`: train.lr throughout (the official code), or decayed to 0 at train.steps along a
    cosine (train.lr_schedule=cosine), which lets a run of minutes end on settled online weights."""
    if t.lr_schedule == "cosine":
        return t.lr * 0.5 * (1 + math.cos(math.pi * min(step / (t.lr_decay_steps or t.steps), 1.0)))
    return t.lr


class StudentView:
    """G (or θ⁻) under the step's autocast: G(x, t, s) through its DDP wrapper (so its gradients are all-reduced),
    and g(x, t, s) of the wrapped CTMPrecond."""

    def __init__(self, G, autocast):
        self.G, self.autocast = G, autocast

    def __call__(self, x, t, s, class_labels=None):
        with self.autocast():
            return self.G(x, t, s, class_labels)

    def g(self, x, t, s, class_labels=None):
        with self.autocast():
            return unwrap(self.G).g(x, t, s, class_labels)


class FP32Distance:
    """d(x, y) in float32 with autocast off, whatever the caller's autocast (the official LPIPS runs in fp32)."""

    def __init__(self, distance):
        self.distance = distance

    def __call__(self, x, y):
        with torch.autocast(x.device.type, enabled=False):
            return self.distance(x.float(), y.float())


class CTMStep:
    """step(state, batch) -> stats: one optimiser step (G or D) on this worker's share of the global batch.

    batch: x0 (B, C, H, W) real images (augmented), label (B,), n, k (B,) grid indices of t = t_n and u = t_{n+k},
    x_t (B, C, H, W), and x_u = Heun^k(x_t) when the trajectory cache supplies it (else the teacher solves it here).
    grid: the run's `ctm.schedule.Grid` (its times, the s and DSM σ draws).
    """

    def __init__(self, cfg, grid, teacher=None, device="cpu", rank=0, world_size=1, amp=None):
        t = cfg.train
        distance = build_distance(t.distance, t.lpips_vgg_path, t.lpips_lin_path)
        if isinstance(distance, torch.nn.Module):
            distance = distance.to(device)
        self.grid, self.t = grid, grid.t.to(device)
        self.ctm_loss, self.dsm_loss = CTMLoss(FP32Distance(distance), float(self.t[-1])), DSMLoss()
        self.teacher, self.device = teacher, torch.device(device)
        self.amp = self.device.type == "cuda" if amp is None else amp  # bf16 autocast of G and θ⁻
        self.rank, self.world_size = rank, world_size
        self.micro, self.seed, self.gan_start, self.gan_warmup = t.micro_batch, t.seed, t.gan_start, t.gan_warmup
        self.target_ema, self.lambda_dsm, self.lambda_gan = t.target_ema, t.lambda_dsm, t.lambda_gan
        self.use_labels, self.train_cfg = cfg.data.use_labels, t

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def __call__(self, state, batch):
        d_step = is_discriminator_step(state.step, self.gan_start)
        B = len(batch["n"])
        chunks = micro_batches(batch, self.micro or B)
        first = self.rank * len(chunks)  # global index of this worker's first micro-batch
        for opt in (state.opt_G, state.opt_D):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        totals = {}
        for i, mb in enumerate(chunks):
            torch.manual_seed(seed_for(self.seed, state.step, first + i, TRAIN_TORCH))  # dropout, DiffAugment
            gen = generator_for(self.seed, state.step, first + i, TRAIN_STEP)
            with self.no_sync(state, last=i == len(chunks) - 1):
                loss, stats = (self.discriminator_loss if d_step else self.generator_loss)(state, mb, gen)
                (loss * self.world_size).backward()
            for key, v in stats.items():
                totals[key] = totals.get(key, 0.0) + v / len(chunks)
        self.check_finite(state, totals, d_step)
        if d_step:
            state.opt_D.step()
        else:
            for group in state.opt_G.param_groups:
                group["lr"] = learning_rate(state.step, self.train_cfg)
            state.opt_G.step()
            G = unwrap(state.G)
            ema_update(state.G_target, G, self.target_ema)
            for rate, ema in state.emas.items():
                ema_update(ema, G, rate)
        return totals

    def check_finite(self, state, totals, d_step):
        """NonFiniteError before the update when a loss term or a gradient (summed over workers) is not finite: nothing
        of the step is applied."""
        bad = [key for key, v in totals.items() if not math.isfinite(v)]
        if bad or nonfinite_gradients([state.D if d_step else state.G]):
            what = "loss" if bad else f"gradient of {'D' if d_step else 'G'}"
            terms = ", ".join(f"{key} {v:.4g}" for key, v in totals.items())
            raise NonFiniteError(f"step {state.step}: non-finite {what} ({terms})")

    def no_sync(self, state, last):
        """Accumulate locally on all but the last micro-batch; DDP all-reduces on the last backward."""
        stack = contextlib.ExitStack()
        if not last:
            for module in (state.G, state.D):
                if isinstance(module, torch.nn.parallel.DistributedDataParallel):
                    stack.enter_context(module.no_sync())
        return stack

    def times(self, mb, gen):
        """t = t_n, u = t_{n+k}, s = t_j with j ~ U{n+k..N−1} (s ≤ u, down to σ_min), on the device."""
        n, k = mb["n"].long(), mb["k"].long()
        j = self.grid.sample_s_index(n, k, gen)
        n, k, j = (a.to(self.device) for a in (n, k, j))
        return n, k, self.t[n].float(), self.t[n + k].float(), self.t[j].float()

    def teacher_segment(self, x_t, n, k, labels):
        """Online mode: x_u = Heun^k(x_t) on the grid, in the precision the cache solves in (float64 for the exact
        mixture teacher, float32 for networks)."""
        if self.teacher is None:
            raise ValueError("this batch has no cached x_u and no teacher was given: online mode "
                             "(train.teacher_mode=online) needs the teacher inside the step")
        with torch.no_grad():
            return heun_segment(self.teacher.denoise, x_t.to(self.teacher.compute_dtype), self.t, n, k, labels).float()

    def generator_loss(self, state, mb, gen):
        n, k, t, u, s = self.times(mb, gen)
        sigma = self.grid.dsm_sigma(len(n), gen).float().to(self.device)
        noise = torch.randn(mb["x0"].shape, generator=gen).to(self.device)
        x0, x_t = mb["x0"].to(self.device), mb["x_t"].to(self.device)
        labels = mb["label"].to(self.device) if self.use_labels else None
        x_u = mb["x_u"].to(self.device) if "x_u" in mb else self.teacher_segment(x_t, n, k, labels)
        gan = self.gan_start is not None and state.step >= self.gan_start + self.gan_warmup
        # only G and θ⁻ under autocast (StudentView); D's own module, not its DDP wrapper: a G step takes no gradient
        # of D, and DDP would wait for one
        with torch.autocast(self.device.type, enabled=False):
            loss, _, stats = generator_objective(
                StudentView(state.G, self.autocast), StudentView(state.G_target, self.autocast), self.ctm_loss,
                self.dsm_loss, x_t, t, x_u, u, s, x0, sigma, noise, unwrap(state.G).last_layer_weight(),
                D=unwrap(state.D) if gan else None, weight_dsm=self.lambda_dsm, weight_gan=self.lambda_gan,
                class_labels=labels)
        return loss, stats

    def discriminator_loss(self, state, mb, gen):
        """Hinge loss on real x0 against x_est = G_θ⁻(G_θ(x_t, t, s), s, σ_min), rebuilt without a graph."""
        _, _, t, _, s = self.times(mb, gen)
        x0, x_t = mb["x0"].to(self.device), mb["x_t"].to(self.device)
        labels = mb["label"].to(self.device) if self.use_labels else None
        with torch.no_grad(), self.autocast():
            x_est = state.G_target(state.G(x_t, t, s, labels), s, float(self.t[-1]), labels)
        with torch.autocast(self.device.type, enabled=False):
            loss = discriminator_objective(state.D, x0, x_est.float())
        return loss, {"loss_d": loss.item()}
