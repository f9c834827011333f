"""What an evaluation samples from: a CTM checkpoint, the mixture teacher's exact flow map, or the teacher's own Heun.

A `Model` is G(x, t, s, class_labels) with the image shape and label count it draws, and an `info` dict that names
it in every reported number (checkpoint, training step, EMA rate).
"""

import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from ctm.seeding import eval_generators
from ctm.solver import heun
from pipeline.checkpoint import checkpoint_file, load_student, read_step
from pipeline.teachers import build_teacher

from .settings import latents_and_labels


@dataclass
class Model:
    G: Callable
    image_shape: tuple
    label_dim: int = 0
    info: dict = field(default_factory=dict)


class ExactFlowMap:
    """G(x, t, s) = the Gaussian-mixture teacher's exact PF-ODE map: the model a perfect CTM student would be."""

    def __init__(self, teacher, rtol=1e-4, atol=1e-4):
        self.teacher, self.rtol, self.atol = teacher, rtol, atol

    def __call__(self, x, t, s, class_labels=None):
        return self.teacher.flow_map(x, t, s, rtol=self.rtol, atol=self.atol)

    def as_model(self):
        return Model(self, self.teacher.image_shape, 0, {"model": "exact flow map of the mixture teacher",
                                                          "rtol": self.rtol, "digest": self.teacher.digest()[:16]})


def load_checkpoint_model(path, ema_rate, device="cpu"):
    """A training checkpoint's EMA student at `ema_rate` (pipeline.checkpoint's contract)."""
    file = checkpoint_file(path)
    G, _ = load_student(file, ema_rate=ema_rate, device=device)
    info = {"checkpoint": str(file.parent), "step": read_step(file), "ema_rate": ema_rate}
    return Model(G, (G.img_channels, G.img_resolution, G.img_resolution), G.label_dim, info)


def as_model(source, ema_rate, device="cpu"):
    """A checkpoint path (directory or checkpoint.pt), a `Model`, or anything with `.as_model()`."""
    if isinstance(source, (str, os.PathLike)):
        return load_checkpoint_model(source, ema_rate, device)
    if isinstance(source, Model):
        return source
    if hasattr(source, "as_model"):
        return source.as_model()
    raise TypeError(f"cannot evaluate a {type(source).__name__}: pass a checkpoint path or a "
                    "pipeline.evaluation.models.Model")


def teacher_model(cfg, device="cpu"):
    teacher = build_teacher(cfg, device)
    identity = teacher.identity()
    info = {"model": f"teacher ({identity['kind']})", "digest": identity["digest"][:16]}
    return teacher, tuple(identity["image_shape"]), identity["label_dim"], info


def teacher_heun_batches(teacher, grid, num, batch_size, seed, image_shape, label_dim=0, device="cpu"):
    """The teacher's own samples: Heun along the whole N-point `grid` from t_0 = σ_max to σ_min (2(N−1) NFE)."""
    t_steps = grid.t.tolist()
    for index, start in enumerate(range(0, num, batch_size)):
        latent_gen, _ = eval_generators(seed, index, device)
        x, labels = latents_and_labels(min(batch_size, num - start), image_shape, label_dim, latent_gen, device)
        with torch.no_grad():
            x = heun(teacher.denoise, x * t_steps[0], t_steps, labels)
        yield x.clamp(-1, 1)
