"""benchmarks/gan_ablation.py: both branches part from one state, and only the GAN branch trains a discriminator."""

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
