"""The seeds every stored or reproduced result depends on: pinned values (a change here changes cache bytes, training
draws or evaluation latents), and the streams kept apart."""

import numpy as np

from ctm.seeding import (READ_K, READ_N, TRAIN_DATA, TRAIN_K, TRAIN_PERM, TRAIN_STEP, TRAIN_TORCH, eval_generators,
                         generator_for, hash_uniform, record_seed, seed_for)


def test_training_seeds_are_pinned():
    assert seed_for(0, 0, 0, 0) == 7896617691693857887 and seed_for(7, 123, 4, 3) == 8316253190601718121
    assert generator_for(7, 123, 4, 3).initial_seed() == 8316253190601718121
    assert (TRAIN_DATA, TRAIN_STEP, TRAIN_TORCH, TRAIN_K, TRAIN_PERM) == (0, 1, 2, 3, 4)
    assert len({seed_for(1, 2, 3, s) for s in range(5)}) == 5


def test_cache_seeds_are_pinned():
    assert record_seed(0, 0) == 6095005618488407320 and record_seed(3, 17) == 8279282500421043915
    assert (READ_N, READ_K) == (1, 2)  # a hash stream of its own, not the training streams' numbering
    assert hash_uniform(0, 0, np.arange(3), READ_K).tolist() == [0.8905966070102489, 0.8331490949579212,
                                                                 0.36847680020332196]
    assert hash_uniform(5, 1, np.array([9]), READ_N).tolist() == [0.251982176327031]


def test_evaluation_generators_are_pinned_and_distinct():
    latent, noise = eval_generators(2, 5, "cpu")
    assert (latent.initial_seed(), noise.initial_seed()) == (4000022, 4000023)
