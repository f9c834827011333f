"""Read-time draws that depend only on (seed, epoch, record index): k given n, and n itself in noise mode.

A counter-based hash (splitmix64 of the combined counters) gives each record its own uniform u, and the draw is the
inverse CDF at u. Deterministic for any split of the records across readers, and vectorised.
"""

import numpy as np

from ctm.schedule import conditional_k, marginal_n

STREAM_N, STREAM_K = 1, 2
_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


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


def _inverse_cdf(probs, u):
    """Per row of `probs` (rows of a discrete law on 0..m), the value whose CDF interval holds u."""
    cdf = np.cumsum(probs, axis=1)
    last = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)  # largest value with mass: u never passes it
    return np.minimum((u[:, None] >= cdf).sum(axis=1), last)


def draw_n(index, N, K, seed, epoch):
    """n from the marginal of the official law (noise mode, whose records hold the whole trajectory)."""
    u = hash_uniform(seed, epoch, index, STREAM_N)
    probs = marginal_n(N, K).numpy()[None].repeat(len(u), axis=0)
    return _inverse_cdf(probs, u).astype(np.int64)


def draw_k(n, index, N, K, seed, epoch):
    """k from P(k | n) of the official law, so that (n, k) follows the joint law P(k) ∝ k, n ~ U{0..N-1-k}."""
    n = np.asarray(n, dtype=np.int64)
    if (n < 0).any() or (n > N - 2).any():
        raise ValueError(f"start indices must lie in 0..N-2 = {N - 2}, got {n.min()}..{n.max()}")
    u = hash_uniform(seed, epoch, index, STREAM_K)
    return _inverse_cdf(conditional_k(N, K).numpy()[n], u).astype(np.int64)
