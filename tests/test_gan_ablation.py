"""benchmarks/gan_ablation.py: the branches part from one state, only GAN branches train a discriminator, and a
warm-up branch keeps the GAN term out of G's steps."""

import torch

from benchmarks.gan_ablation import ablation_config, run_branches
from pipeline.train.state import unwrap


def parameters(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_the_control_is_the_uninterrupted_ctm_run_and_only_the_gan_branch_moves_d(tmp_path):
    cfg = ablation_config(0, 4, 2, [f"cache.root={tmp_path}"])  # seed 0: the shipped teacher start
    branches = run_branches(cfg)
    plain = run_branches(ablation_config(0, 4, 3, [f"cache.root={tmp_path}"]))["control"]  # parts one step later
    assert torch.equal(parameters(unwrap(branches["control"].G)), parameters(unwrap(plain.G)))
    assert not torch.equal(parameters(unwrap(branches["GAN"].G)), parameters(unwrap(branches["control"].G)))
    fresh = parameters(unwrap(branches["control"].D))
    assert not torch.equal(parameters(unwrap(branches["GAN"].D)), fresh)  # one D step (step 3)
    assert branches["GAN"].step == branches["control"].step == 4


def test_a_warmup_branch_trains_d_while_g_steps_leave_out_the_gan_term(tmp_path):
    overrides = [f"cache.root={tmp_path}"]
    branches = run_branches(ablation_config(0, 4, 2, overrides), warmups=(0, 2))
    ctm_only = run_branches(ablation_config(0, 3, 2, [*overrides, "train.lr_decay_steps=4"]),  # G steps 0, 1, 2 at
                            warmups=())["control"]                                           # the same learning rates
    warm = branches["GAN, warm-up 2"]  # G steps 0, 1, 2 (no GAN term), D step 3
    assert torch.equal(parameters(unwrap(warm.G)), parameters(unwrap(ctm_only.G)))
    assert not torch.equal(parameters(unwrap(branches["GAN"].G)), parameters(unwrap(ctm_only.G)))
    assert not torch.equal(parameters(unwrap(warm.D)), parameters(unwrap(branches["control"].D)))
