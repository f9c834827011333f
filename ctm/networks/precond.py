"""EDM's preconditioning (Karras et al. 2022, Table 1) and the builders for EDM-compatible networks.

The backbone families differ only in c_noise, the noise label each was trained with: EDM's ln(σ)/4 for its SongUNet
and DhariwalUNet; 250·ln(σ + 1e-44) for OpenAI's EDM-trained ADM (`ADMUNet`, consistency_models `KarrasDenoiser`).
"""

import contextlib
import inspect

import torch

from .adm import ADMUNet
from .dhariwalunet import DhariwalUNet
from .songunet import SongUNet

BACKBONES = {'SongUNet': SongUNet, 'DhariwalUNet': DhariwalUNet, 'ADMUNet': ADMUNet}


def build_backbone(model_type, img_resolution, img_channels, label_dim, **model_kwargs):
    if model_type not in BACKBONES:
        raise ValueError(f'unknown model_type {model_type!r}; choose one of {sorted(BACKBONES)}')
    backbone = BACKBONES[model_type]
    accepted = set(inspect.signature(backbone).parameters) - {'img_resolution', 'in_channels', 'out_channels', 'label_dim'}
    unknown = sorted(set(model_kwargs) - accepted)
    if unknown:
        raise TypeError(f'{model_type} got unknown argument(s) {unknown}; it accepts {sorted(accepted)}')
    return backbone(img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels, label_dim=label_dim, **model_kwargs)


def edm_c_noise(sigma):
    """EDM's noise label (Table 1): ln(σ)/4."""
    return sigma.log() / 4


def adm_c_noise(sigma):
    """The noise label of OpenAI's EDM-trained ADM: 250·ln(σ + 1e-44) (consistency_models `denoise`, sony/ctm)."""
    return 1000 * 0.25 * (sigma + 1e-44).log()


C_NOISE = {'SongUNet': edm_c_noise, 'DhariwalUNet': edm_c_noise, 'ADMUNet': adm_c_noise}


def edm_scalings(sigma, sigma_data):
    """c_skip, c_out, c_in, c_noise of EDM (Table 1): D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise)."""
    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_in = 1 / (sigma_data ** 2 + sigma ** 2).sqrt()
    return c_skip, c_out, c_in, edm_c_noise(sigma)


def as_images(net, x):
    expected = (net.img_channels, net.img_resolution, net.img_resolution)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f'{type(net).__name__} expects images of shape (B, {", ".join(map(str, expected))}), got {tuple(x.shape)}')
    return x.to(torch.float32)


def as_sigma(sigma, x, name='sigma'):
    """A noise level given as a float, a 0-d tensor or a (B,) tensor, as a float32 (B, 1, 1, 1) tensor."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma.ndim > 1 or sigma.numel() not in (1, x.shape[0]):
        raise ValueError(f'{name} must be a float, a 0-d tensor or a ({x.shape[0]},) tensor; got shape {tuple(sigma.shape)}')
    return sigma.reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)


def as_class_labels(net, class_labels, x):
    """One-hot float32 (B, label_dim) labels, from one-hot rows or integer class indices; None if unconditional."""
    if net.label_dim == 0:
        return None
    if class_labels is None:
        raise ValueError(f'{type(net).__name__} is class-conditional (label_dim={net.label_dim}): pass class_labels as '
                         f'integer indices (B,) or one-hot rows (B, {net.label_dim}); all-zero rows mean "no label"')
    if not class_labels.is_floating_point():
        class_labels = torch.nn.functional.one_hot(class_labels.long(), net.label_dim)
    if class_labels.shape != (x.shape[0], net.label_dim):
        raise ValueError(f'class_labels must be (B,) integers or (B, {net.label_dim}) one-hot with B={x.shape[0]}; got shape {tuple(class_labels.shape)}')
    return class_labels.to(torch.float32)


def model_dtype(net, x):
    """EDM's `use_fp16`: the backbone runs in fp16 on CUDA, from fp32 master weights."""
    return torch.float16 if net.use_fp16 and x.device.type == 'cuda' else torch.float32


class Preconditioned(torch.nn.Module):
    """EDM's preconditioning settings around a backbone `self.model`; `init_kwargs` rebuilds the network."""

    def __init__(self,
        img_resolution,                 # Image resolution.
        img_channels,                   # Number of color channels.
        label_dim=0,                    # Number of class labels, 0 = unconditional.
        use_fp16=False,                 # Execute the underlying model at FP16 precision?
        sigma_min=0,                    # Minimum supported noise level.
        sigma_max=float('inf'),         # Maximum supported noise level.
        sigma_data=0.5,                 # Expected standard deviation of the training data.
        model_type='DhariwalUNet',      # Class name of the underlying model.
        s_path=False,                   # Give the backbone CTM's s-embedding (a student, not EDM's own denoiser)?
        **model_kwargs,                 # Keyword arguments for the underlying model.
    ):
        super().__init__()
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, use_fp16=use_fp16,
                                sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data, model_type=model_type, **model_kwargs)
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = build_backbone(model_type, img_resolution, img_channels, label_dim, s_path=s_path, **model_kwargs)

    def c_noise(self, sigma):
        """The noise label c_noise(σ) that this backbone family was trained with."""
        return C_NOISE[self.init_kwargs['model_type']](sigma)


class EDMPrecond(Preconditioned):
    """EDM's denoiser D(x, σ) around a backbone `self.model` (state dict keys as in EDM's pickles, or OpenAI's ADM
    state dict under `model.`); arguments as `Preconditioned`'s."""

    def __init__(self, *args, **kwargs):
        if 's_path' in kwargs:
            raise ValueError('EDMPrecond takes no s_path (it is a teacher denoiser); build a CTM student with ctm.student.build_ctm_student')
        super().__init__(*args, **kwargs)

    def forward(self, x, sigma, class_labels=None):
        x = as_images(self, x)
        sigma = as_sigma(sigma, x)
        class_labels = as_class_labels(self, class_labels, x)
        c_skip, c_out, c_in, _ = edm_scalings(sigma, self.sigma_data)
        F_x = self.model((c_in * x).to(model_dtype(self, x)), self.c_noise(sigma).flatten(), class_labels)
        return c_skip * x + c_out * F_x.to(torch.float32)


def build_edm_network(**kwargs):
    """An `EDMPrecond` from EDM's constructor arguments, e.g. `networks.json`'s `constructor_kwargs`."""
    return EDMPrecond(**kwargs)


def tiny_songunet_kwargs(img_resolution, img_channels, label_dim=0):
    """EDMPrecond arguments of a small DDPM++ that runs fast on CPU (e.g. 8x8 digits)."""
    return dict(
        img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, model_type='SongUNet',
        embedding_type='positional', encoder_type='standard', decoder_type='standard', channel_mult_noise=1,
        resample_filter=[1, 1], model_channels=16, channel_mult=[1, 2], num_blocks=1,
        attn_resolutions=[img_resolution // 2], dropout=0.0,
    )


@contextlib.contextmanager
def fast_inference(device_type='cuda', dtype=torch.bfloat16):
    """No-grad bf16 autocast for sampling; networks keep fp32 weights, run attention softmax in fp32, return fp32.

    Combine with `net.to(memory_format=torch.channels_last)` and channels-last inputs on GPUs.
    """
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
        yield
