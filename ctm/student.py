"""The CTM student G_θ(x_t, t, s) (Kim et al. 2024, docs/method.md §1).

G(x_t, t, s) = (s/t)·x_t + (1 − s/t)·g(x_t, t, s), g = c_skip(t)·x_t + c_out(t)·F(c_in(t)·x_t, c_noise(t), c_noise(s), y)
with EDM's scalings at t only, so G(x, t, t) = x and g(x, t, t) is a denoiser. c_noise, for t and s alike, is the
teacher family's: EDM's ln(σ)/4 for SongUNet / DhariwalUNet (official CIFAR-10 code), 250·ln(σ + 1e-44) for OpenAI's
ADM `ADMUNet` (official ImageNet-64 code).

The backbone is the teacher's built with `s_path=True`: the s-path layers carry `_s` names (`map_layer0_s`,
`map_layer1_s`, `affine_s` in EDM's nets; `time_embed_s`, `emb_layers_s` in ADM's), every other key is the teacher's.
"""

import torch

from .networks.adm import ADMUNet
from .networks.precond import (EDMPrecond, Preconditioned, as_class_labels, as_images, as_sigma, edm_scalings,
                               model_dtype)
from .networks.songunet import SongUNet


def is_s_path_key(key):
    return any(part.endswith('_s') for part in key.split('.'))


class CTMPrecond(Preconditioned):
    """G_θ and g_θ around a teacher-family backbone with an s-path; constructor arguments are EDMPrecond's."""

    def __init__(self, *args, **kwargs):
        if 's_path' in kwargs:
            raise ValueError('CTMPrecond always builds its backbone with s_path=True; drop the s_path argument')
        super().__init__(*args, s_path=True, **kwargs)

    def g(self, x, t, s, class_labels=None):
        """g_θ(x_t, t, s): the denoiser-like output; g(x, σ, σ) is the student's estimate of D(x, σ)."""
        x = as_images(self, x)
        t = as_sigma(t, x, 't')
        s = as_sigma(s, x, 's')
        class_labels = as_class_labels(self, class_labels, x)
        c_skip, c_out, c_in, _ = edm_scalings(t, self.sigma_data)
        F_x = self.model((c_in * x).to(model_dtype(self, x)), self.c_noise(t).flatten(), class_labels,
                         noise_labels_s=self.c_noise(s).flatten())
        return c_skip * x + c_out * F_x.to(torch.float32)

    def forward(self, x, t, s, class_labels=None):
        """G_θ(x_t, t, s), the jump from time t to time s ≤ t along the PF-ODE ('euler' outer parametrization)."""
        g = self.g(x, t, s, class_labels)
        x = x.to(torch.float32)
        ratio = as_sigma(s, x, 's') / as_sigma(t, x, 't')
        return ratio * x + (1 - ratio) * g

    def last_layer_weight(self):
        """W_L for the adaptive loss weights (docs/method.md §3): SongUNet's final conv; ADM's last block's zero-init conv
        (OpenAI's ADM: `output_blocks[15][0].out_layers[3]` on ImageNet-64)."""
        if isinstance(self.model, SongUNet):
            res = self.img_resolution
            return self.model.dec[f'{res}x{res}_aux_conv'].weight
        if isinstance(self.model, ADMUNet):
            return self.model.output_blocks[-1][0].out_layers[3].weight
        return list(self.model.dec.values())[-1].conv1.weight


def build_ctm_student(**kwargs):
    """A freshly initialised `CTMPrecond` from EDMPrecond's constructor arguments."""
    return CTMPrecond(**kwargs)


def student_from_teacher(teacher):
    """A student of the teacher's architecture holding every teacher weight; the s-path keeps its random init."""
    if not isinstance(teacher, EDMPrecond):
        raise TypeError(f'student_from_teacher needs a ctm.networks.EDMPrecond teacher, got {type(teacher).__name__}')
    student = CTMPrecond(**teacher.init_kwargs).to(next(teacher.parameters()).device)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    not_s_path = [k for k in missing if not is_s_path_key(k)]
    if unexpected or not_s_path:
        raise RuntimeError(f'teacher and student architectures differ: teacher keys unused {unexpected}, student keys not from the teacher {not_s_path}')
    return student
