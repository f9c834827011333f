"""A record's contents, which depend only on the cache key and the record's index.

Record i draws everything from its own generator, seeded from (cache.seed, i), in this order:
data mode: n ~ marginal of the official (n, k) law (`ctm.schedule.Grid.sample_n`), the dataset index, a flip coin, z;
noise mode: n = 0, a class label (conditional teachers only), z. Its states are the teacher's Heun steps on the
CTM grid from x_{t_n} = x0 + t_n·z down to σ_min, computed on the records that have reached each grid index, so
no record's bytes depend on which other records shared its batch.
"""

from dataclasses import dataclass

import numpy as np
import torch

from ctm.schedule import Grid
from ctm.seeding import record_seed
from ctm.solver import heun_from_starts

STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class RecordSpec:
    """The key fields a record generator needs, as plain data."""
    seed: int
    grid: Grid                  # t_0 = σ_max > ... > t_{N-1} = σ_min, and K
    mode: str                   # "data" | "noise"
    image_shape: tuple
    hflip: bool
    conditional: bool           # pass class labels to the teacher
    label_dim: int
    dtype: str                  # storage dtype of the states
    compute_dtype: str          # "float64" for the exact mixture teacher, "float32" for networks


def draw_record(spec, index, num_images):
    """(seed, n, data index, flip, label draw or None, z) of one record, from its own generator."""
    seed = record_seed(spec.seed, index)
    g = torch.Generator().manual_seed(seed)
    n, j, flip, label = 0, -1, False, None
    if spec.mode == "data":
        n = int(spec.grid.sample_n(1, g))
        j = int(torch.randint(num_images, (1,), generator=g))
        flip = bool(torch.rand(1, generator=g) < 0.5) and spec.hflip
    elif spec.conditional:
        label = int(torch.randint(spec.label_dim, (1,), generator=g))
    z = torch.randn(spec.image_shape, generator=g)
    return seed, n, j, flip, label, z


def make_records(spec, teacher, images, labels, indices, batch_size, device="cpu"):
    """The arrays of records `indices` (numpy, ready for a shard), solved `batch_size` records at a time.

    images: float32 (M, C, H, W) in [-1, 1], or a `pipeline.datasets.ImageSource`, of which only these records'
    images are read; labels int64 (M,); both None in noise mode."""
    draws = [draw_record(spec, int(i), 0 if images is None else len(images)) for i in indices]
    seed, n, j, flip, label_draw, z = zip(*draws)
    n, j = torch.tensor(n), torch.tensor(j)
    x0 = torch.zeros(len(indices), *spec.image_shape)
    label = torch.full((len(indices),), -1, dtype=torch.int64)
    if spec.mode == "data":
        x0 = torch.from_numpy(images[j.numpy()])
        x0 = torch.where(torch.tensor(flip).view(-1, *[1] * len(spec.image_shape)), x0.flip(-1), x0)
        label = torch.from_numpy(labels[j.numpy()]).long()
    elif spec.conditional:
        label = torch.tensor(label_draw)
    z = torch.stack(z)
    compute = getattr(torch, spec.compute_dtype)
    t = spec.grid.t
    x_start = x0.to(compute) + t[n].to(compute).view(-1, *[1] * len(spec.image_shape)) * z.to(compute)
    states = []
    for lo in range(0, len(indices), batch_size):
        sl = slice(lo, lo + batch_size)
        class_labels = (torch.nn.functional.one_hot(label[sl], spec.label_dim).float().to(device)
                        if spec.conditional else None)
        s = heun_from_starts(teacher.denoise, x_start[sl].to(device), n[sl].to(device), t, class_labels)
        states.append(s.to(STORAGE_DTYPES[spec.dtype]).cpu())  # cast on the device: half the bytes to copy
    return {
        "states": torch.cat(states).numpy(),
        "start": n.numpy().astype(np.int64),
        "x0": x0.float().numpy(),
        "label": label.numpy().astype(np.int64),
        "index": np.asarray(indices, dtype=np.int64),
        "data_index": j.numpy().astype(np.int64),
        "flip": np.asarray(flip, dtype=bool),
        "seed": np.asarray(seed, dtype=np.int64),
    }
