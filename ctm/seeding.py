"""Every seed the project derives, in one place. Three derivations, kept apart because each one's values are part of a
stored or reproduced result (changing one changes cache bytes or training draws):

- `seed_for(*keys)`: training draws, a SeedSequence of (train.seed, step or epoch, micro-batch index, TRAIN_* stream);
- `hash_uniform(seed, epoch, index, READ_*)`: the cache's read-time draws, a counter-based splitmix64 hash, vectorised
  over record indices and independent of how the records are split across readers;
- `record_seed(seed, index)`: a cache record's generator, from sha256 (part of the cache's bytes).

`eval_generators` gives an evaluation batch its latent and noise generators.
"""

import hashlib

import numpy as np
import torch

# streams of seed_for (training): the data draws, the step's draws (s, DSM σ and noise), torch's global RNG (dropout,
# DiffAugment), the step's k, the epochs' permutations
TRAIN_DATA, TRAIN_STEP, TRAIN_TORCH, TRAIN_K, TRAIN_PERM = range(5)
# streams of hash_uniform (cache reads): n in noise mode, k given n
READ_N, READ_K = 1, 2

_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def seed_for(*keys):
    """A 63-bit seed from non-negative integers (train.seed, step, micro-batch index, stream)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


def generator_for(*keys):
    return torch.Generator().manual_seed(seed_for(*keys))


def _splitmix64(x):
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed, epoch, index, stream):
    """u in [0, 1) for each record index, a function of (seed, epoch, stream, index) only."""
    with np.errstate(over="ignore"):
        h = _splitmix64(np.full(1, seed % 2 ** 64, dtype=np.uint64))
        h = _splitmix64(h ^ np.uint64(epoch % 2 ** 64))
        h = _splitmix64(h ^ np.uint64(stream))
        h = _splitmix64(h ^ np.asarray(index, dtype=np.int64).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def record_seed(seed, index):
    """The seed of cache record `index`'s generator: 63 bits of sha256("ctm-cache:{seed}:{index}")."""
    digest = hashlib.sha256(f"ctm-cache:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def eval_generators(seed, index, device):
    """Independent generators for evaluation batch `index`: one for latents and labels, one for the renoising noise."""
    latent = torch.Generator(device).manual_seed(2 * (seed * 1_000_003 + index))
    noise = torch.Generator(device).manual_seed(2 * (seed * 1_000_003 + index) + 1)
    return latent, noise
