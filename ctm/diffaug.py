"""DiffAugment (Zhao et al. 2020), as applied to both real and fake images by the CTM / StyleGAN-XL discriminator."""

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def _uniform(x, low, high, generator):
    """One U[low, high) draw per sample, shaped (B, 1, 1, 1)."""
    return low + (high - low) * torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=x.device, dtype=x.dtype)


def color(x, generator=None):
    """Random brightness (+U[-0.5, 0.5]), saturation (x U[0, 2]) and contrast (x U[0.5, 1.5]) per sample."""
    x = x + _uniform(x, -0.5, 0.5, generator)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _uniform(x, 0.0, 2.0, generator) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(x, 0.5, 1.5, generator) + mean


def translate(x, shift):
    """out[b, :, i, j] = x[b, :, i - shift[b, 0], j - shift[b, 1]], zero where that falls outside the image."""
    B, _, H, W = x.shape
    rows = torch.arange(H, device=x.device) - shift[:, :1]  # (B, H) source row of each output row
    cols = torch.arange(W, device=x.device) - shift[:, 1:]  # (B, W)
    x = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # zero border at padded index 0 and H + 1 (W + 1)
    rows, cols = (rows + 1).clamp(0, H + 1), (cols + 1).clamp(0, W + 1)
    b = torch.arange(B, device=x.device)[:, None, None]
    return x[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x, center, size):
    """Zero a size[0] x size[1] rectangle per sample starting at center - size // 2, clipped to the image."""
    H, W = x.shape[-2:]
    rows = torch.arange(H, device=x.device) - (center[:, :1] - size[0] // 2)  # (B, H) offset inside the rectangle
    cols = torch.arange(W, device=x.device) - (center[:, 1:] - size[1] // 2)
    inside = ((rows >= 0) & (rows < size[0]))[:, :, None] & ((cols >= 0) & (cols < size[1]))[:, None, :]
    return x * (~inside).unsqueeze(1).to(x.dtype)


def _randint(x, high, generator):
    """Per-sample integers, column k uniform on {0, ..., high[k] - 1}: shape (B, len(high))."""
    draws = [torch.randint(h, (x.shape[0], 1), generator=generator, device=x.device) for h in high]
    return torch.cat(draws, dim=1)


def random_translation(x, ratio=0.125, generator=None):
    """Translate each sample by integers in [-ratio * size, ratio * size] (rounded) along each axis, zero padded."""
    max_shift = [int(x.shape[2] * ratio + 0.5), int(x.shape[3] * ratio + 0.5)]
    shift = _randint(x, [2 * m + 1 for m in max_shift], generator) - torch.tensor(max_shift, device=x.device)
    return translate(x, shift)


def random_cutout(x, ratio=0.2, generator=None):
    """Zero a (ratio * size)-sided square per sample; its centre is uniform over the image, as in DiffAugment."""
    size = (int(x.shape[2] * ratio + 0.5), int(x.shape[3] * ratio + 0.5))
    center = _randint(x, [x.shape[2] + 1 - size[0] % 2, x.shape[3] + 1 - size[1] % 2], generator)
    return cutout(x, center, size)


def diff_augment(x, policy="color,translation,cutout", translation_ratio=0.125, cutout_ratio=0.2, generator=None):
    """Apply the comma-separated `policy` to an NCHW batch in [-1, 1]; differentiable w.r.t. x, random per sample."""
    names = [p for p in policy.split(",") if p]
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown} in '{policy}': pick from {POLICIES}")
    for name in names:
        if name == "color":
            x = color(x, generator)
        elif name == "translation":
            x = random_translation(x, translation_ratio, generator)
        else:
            x = random_cutout(x, cutout_ratio, generator)
    return x
