"""Sampling settings an evaluation scores: γ-sampling at (NFE, γ), optionally along explicit intermediate times (a
schedule search's settings), or the 2-step variant with grid indices (i1, i2).

Every setting resolves to the jump times (t_n) and landing times (s_n) of `ctm.sampling.jump_sample`, and those
times ride along with each reported number. Batches are drawn from seeded generators, so every setting of one
evaluation starts from the same latents (common random numbers make settings comparable at a modest count).
"""

import itertools
from dataclasses import asdict, dataclass

import torch

from ctm.sampling import gamma_landings, gamma_steps, jump_sample, two_step_times
from ctm.seeding import eval_generators


@dataclass(frozen=True)
class Setting:
    nfe: int
    gamma: float | None = 0.0     # γ-sampler (docs/method.md §4); None for the 2-step variant
    i1: int | None = None         # 2-step: jump 80 → t_{i1}, renoise to t_{i2} (i2 <= i1), jump to σ_min
    i2: int | None = None
    sigmas: tuple | None = None   # γ-sampling along t_0 = σ_max > sigmas > σ_min instead of the ρ-ramp (NFE − 1 times)

    def __post_init__(self):
        two_step = self.i1 is not None or self.i2 is not None
        if self.sigmas is not None:
            object.__setattr__(self, "sigmas", tuple(float(t) for t in self.sigmas))
            if two_step or len(self.sigmas) != self.nfe - 1 or any(b > a for a, b in zip(self.sigmas, self.sigmas[1:])):
                raise ValueError(f"explicit times need NFE − 1 non-increasing sigmas (and no i1, i2); got {self}")
        if two_step and (self.i1 is None or self.i2 is None or self.nfe != 2 or self.gamma is not None):
            raise ValueError(f"a 2-step setting needs nfe=2, gamma=None and both i1 and i2; got {self}")
        if not two_step and (self.nfe < 1 or self.gamma is None or not 0 <= self.gamma <= 1):
            raise ValueError(f"a γ-sampling setting needs nfe >= 1 and 0 <= gamma <= 1; got {self}")

    @property
    def label(self):
        if self.i1 is not None:
            return f"2-step i1={self.i1} i2={self.i2}"
        if self.sigmas is not None:
            return f"NFE {self.nfe} γ={self.gamma:.4g} t=({', '.join(f'{t:.3g}' for t in self.sigmas)})"
        return f"NFE {self.nfe} γ={self.gamma:g}"

    @property
    def tag(self):
        """The label as a file-name part."""
        if self.i1 is not None:
            return f"two_step_i1_{self.i1}_i2_{self.i2}"
        if self.sigmas is not None:
            return f"schedule_nfe{self.nfe}_gamma{self.gamma:.4g}_t" + "_".join(f"{t:.3g}" for t in self.sigmas)
        return f"nfe{self.nfe}_gamma{self.gamma:g}"

    def times(self, grid):
        """(t_steps, s_steps) of the jumps on `grid` (a `ctm.schedule.Grid`): its σ range and ρ, and its N points
        for the 2-step variant."""
        if self.sigmas is not None:
            if self.sigmas and not grid.sigma_min <= self.sigmas[-1] <= self.sigmas[0] <= grid.sigma_max:
                raise ValueError(f"explicit times must lie in [sigma_min, sigma_max] = [{grid.sigma_min}, "
                                 f"{grid.sigma_max}]; got {list(self.sigmas)}")
            t_steps = [float(grid.sigma_max), *self.sigmas, float(grid.sigma_min)]
            return t_steps, gamma_landings(t_steps, self.gamma)
        if self.i1 is None:
            return gamma_steps(self.nfe, self.gamma, grid)
        return two_step_times(grid, self.i1, self.i2)

    def to_dict(self, grid=None):
        d = {**asdict(self), "label": self.label, "tag": self.tag}
        if grid is not None:
            d["t_steps"], d["s_steps"] = self.times(grid)
        return d


def gamma_settings(nfes, gammas):
    return [Setting(int(n), float(g)) for n, g in itertools.product(nfes, gammas)]


def two_step_settings(pairs):
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"2-step settings are [i1, i2] pairs, got {pair!r}")
        out.append(Setting(2, None, int(pair[0]), int(pair[1])))
    return out


def latents_and_labels(batch, image_shape, label_dim, generator, device):
    latents = torch.randn((batch, *image_shape), generator=generator, device=device)
    labels = torch.randint(label_dim, (batch,), generator=generator, device=device) if label_dim else None
    return latents, labels


def sample_batches(G, setting, grid, num, batch_size, seed, image_shape, label_dim=0, device="cpu"):
    """Yield `num` samples in [−1, 1] from G(x, t, s, labels) with `setting` on `grid`, batch by batch."""
    t_steps, s_steps = setting.times(grid)
    for index, start in enumerate(range(0, num, batch_size)):
        latent_gen, noise_gen = eval_generators(seed, index, device)
        latents, labels = latents_and_labels(min(batch_size, num - start), image_shape, label_dim, latent_gen, device)
        with torch.no_grad():  # left before the yield: a generator paused inside it would turn grad off for its caller
            x = jump_sample(G, latents * t_steps[0], t_steps, s_steps, labels, noise_gen)
        yield x
