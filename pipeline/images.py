"""Sample grids as PNG files."""

import math

import numpy as np
from PIL import Image


def save_grid(images, path, nrow=None, scale=4):
    """Tile images (B, C, H, W) in [−1, 1] into one PNG, each pixel repeated `scale` times."""
    x = np.asarray(images.detach().cpu().float().clamp(-1, 1)) if hasattr(images, "detach") else np.asarray(images)
    B, C, H, W = x.shape
    nrow = nrow or math.ceil(math.sqrt(B))
    ncol = math.ceil(B / nrow)
    grid = np.zeros((C, ncol * (H + 1) + 1, nrow * (W + 1) + 1), dtype=np.float32)
    for i, img in enumerate(x):
        r, c = divmod(i, nrow)
        grid[:, 1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = (img + 1) / 2
    pixels = (grid.transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8)
    pixels = pixels.repeat(scale, 0).repeat(scale, 1)
    Image.fromarray(pixels[..., 0] if C == 1 else pixels).save(path)
