"""What a training run carries from step to step: G, its target θ⁻ and evaluation EMAs, D, both optimisers, the step.

Built from the config and the teacher (docs/method.md §1, §3): the student is the teacher's EDM or ADM network plus the
s-path (`student_from_teacher`) or the tiny DDPM++ for the digits mixture teacher; θ⁻ and every EMA start as copies of
G; G uses RAdam (no weight decay, no LR decay), D RAdam with betas (0.5, 0.9).
"""

import copy
from dataclasses import dataclass

import torch

from ctm.discriminator import build_discriminator
from ctm.networks import tiny_songunet_kwargs
from ctm.student import CTMPrecond, student_from_teacher


@dataclass
class TrainState:
    G: torch.nn.Module              # the CTMPrecond (DDP-wrapped once prepared for several workers)
    G_target: torch.nn.Module       # θ⁻, EMA at train.target_ema, in train mode (dropout as in the official code)
    emas: dict                      # {rate: CTMPrecond in eval mode}
    D: torch.nn.Module | None       # None without a GAN stage
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer | None
    step: int = 0                   # optimiser steps taken, G and D steps counted together


def unwrap(module):
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def student_kwargs(cfg, teacher):
    """CTMPrecond constructor arguments for `cfg.student` and this teacher (its image shape and label count)."""
    if cfg.student.architecture == "tiny":
        identity = teacher.identity()
        C, H, _ = identity["image_shape"]
        kwargs = tiny_songunet_kwargs(H, C, identity["label_dim"])
        if cfg.student.channels is not None:
            kwargs["model_channels"] = cfg.student.channels
    elif teacher.network_kwargs is not None:
        kwargs = teacher.network_kwargs
    else:
        raise ValueError(f"student.architecture 'teacher' copies an EDM or ADM teacher's network, but teacher.kind is "
                         f"{type(teacher).__name__}; use student.architecture=tiny for the Gaussian-mixture teacher")
    if cfg.student.dropout is not None:
        kwargs["dropout"] = cfg.student.dropout
    return kwargs


def build_student(cfg, kwargs, teacher=None, start=None):
    """A fresh CTMPrecond: the weights `start` (a state dict: the teacher start of a mixture teacher), else with
    architecture 'teacher' and init_from_teacher every weight of `teacher` copied in (teacher None: the random
    initialisation stays, for a state that a checkpoint is about to overwrite)."""
    G = CTMPrecond(**kwargs)
    if start is not None:
        G.load_state_dict(start)
    elif cfg.student.architecture == "teacher" and cfg.student.init_from_teacher and teacher is not None:
        G.load_state_dict(student_from_teacher(teacher.net).state_dict())
    return G


def build_state(cfg, kwargs, teacher, device, start=None):
    """A fresh TrainState on `device`, its random initial weights a function of train.seed (the teacher is only read
    for its weights, when the student copies them; `start` is the weights a mixture teacher's student starts from)."""
    t = cfg.train
    torch.manual_seed(t.seed)
    G = build_student(cfg, kwargs, teacher, start).to(device).train()
    G_target = copy.deepcopy(G).requires_grad_(False)
    emas = {rate: copy.deepcopy(G).eval().requires_grad_(False) for rate in t.ema_rates}
    opt_G = torch.optim.RAdam(G.parameters(), lr=t.lr)
    D = opt_D = None
    if t.gan_start is not None:
        D = build_discriminator(t.discriminator, img_channels=kwargs["img_channels"], weights_paths=t.discriminator_weights,
                                img_resolution=kwargs["img_resolution"], diffaug_policy=t.diffaug).to(device).train()
        opt_D = torch.optim.RAdam([p for p in D.parameters() if p.requires_grad], lr=t.lr_d, betas=tuple(t.betas_d))
    return TrainState(G, G_target, emas, D, opt_G, opt_D)


def state_parts(state):
    """The model and optimiser parts of a checkpoint (see pipeline.checkpoint)."""
    return {
        "step": state.step,
        "student_kwargs": unwrap(state.G).init_kwargs,
        "student": unwrap(state.G).state_dict(),
        "target": state.G_target.state_dict(),
        "ema": {str(rate): ema.state_dict() for rate, ema in state.emas.items()},
        "discriminator": None if state.D is None else unwrap(state.D).state_dict(),
        "opt_G": state.opt_G.state_dict(),
        "opt_D": None if state.opt_D is None else state.opt_D.state_dict(),
    }


def nonfinite_parts(parts):
    """Names of the checkpoint parts whose tensors (weights, optimiser moments) hold a NaN or an infinity; plain
    numbers are settings (σ_max = ∞ is one)."""
    def finite(x):
        if isinstance(x, torch.Tensor):
            return not x.is_floating_point() or bool(x.isfinite().all())
        if isinstance(x, dict):
            return all(finite(v) for v in x.values())
        return not isinstance(x, (list, tuple)) or all(finite(v) for v in x)
    return [name for name, x in parts.items() if not finite(x)]


def load_weights(state, parts, target="target"):
    """Student, target θ⁻ and every EMA from a checkpoint's parts (a rate the checkpoint lacks starts from its G).

    target: "target" takes θ⁻ from the checkpoint's θ⁻; "ema_<rate>" from its EMA at that rate, as the official loop
    resets θ⁻ to the 0.999 EMA when a run starts from another run's checkpoint (docs/method.md §3, train.init_target).
    """
    ours, theirs = ({k: v for k, v in kw.items() if k != "dropout"} for kw in (unwrap(state.G).init_kwargs,
                                                                                 parts["student_kwargs"]))
    if ours != theirs:
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        raise ValueError(f"the checkpoint's student architecture differs from this config's in {differ}: "
                         f"checkpoint {[theirs.get(k) for k in differ]}, config {[ours.get(k) for k in differ]}")
    if target != "target" and target.removeprefix("ema_") not in parts["ema"]:
        raise ValueError(f"train.init_target={target}: the checkpoint holds EMAs at rates {sorted(parts['ema'])} only; "
                         "choose one of those, or init_target=target")
    unwrap(state.G).load_state_dict(parts["student"])
    state.G_target.load_state_dict(parts["target"] if target == "target" else parts["ema"][target.removeprefix("ema_")])
    for rate, ema in state.emas.items():
        ema.load_state_dict(parts["ema"].get(str(rate), parts["student"]))


def resume(state, parts):
    """Everything from a checkpoint of the same run: weights, D, both optimisers and the step."""
    load_weights(state, parts)
    if (parts["discriminator"] is None) != (state.D is None):
        raise ValueError("the checkpoint and the config disagree on the GAN stage (train.gan_start): resume with the "
                         "run's own config, or start a new run from the checkpoint with train.init_checkpoint")
    if state.D is not None:
        unwrap(state.D).load_state_dict(parts["discriminator"])
        state.opt_D.load_state_dict(parts["opt_D"])
    state.opt_G.load_state_dict(parts["opt_G"])
    state.step = int(parts["step"])
