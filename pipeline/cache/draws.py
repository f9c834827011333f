"""Read-time draws that depend only on (seed, epoch, record index): k given n, and n itself in noise mode.

Each record's uniform u comes from a counter-based hash (`ctm.seeding.hash_uniform`), and the draw is the official
law's inverse CDF at u (`ctm.schedule.n_from_uniform` / `k_from_uniform`). Deterministic for any split of the
records across readers, and vectorised. N and K are the cache's own (its manifest's grid).
"""

from ctm.schedule import k_from_uniform, n_from_uniform
from ctm.seeding import READ_K, READ_N, hash_uniform


def draw_n(index, N, K, seed, epoch):
    """n from the marginal of the official law (noise mode, whose records hold the whole trajectory)."""
    return n_from_uniform(hash_uniform(seed, epoch, index, READ_N), N, K)


def draw_k(n, index, N, K, seed, epoch):
    """k from P(k | n) of the official law, so that (n, k) follows the joint law P(k) ∝ k, n ~ U{0..N-1-k}."""
    return k_from_uniform(n, hash_uniform(seed, epoch, index, READ_K), N, K)
