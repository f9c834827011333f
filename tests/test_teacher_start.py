import copy

import torch

from ctm.digits import load_digits_images
from ctm.networks import tiny_songunet_kwargs
from ctm.schedule import Grid
from ctm.student import CTMPrecond
from ctm.teacher_start import TeacherRegressionLoss, regress_onto_teacher
from tests.conftest import make_gmm

GRID = Grid()


def test_regression_loss_is_zero_at_the_teacher_and_edm_weighted_elsewhere():
    teacher = make_gmm(4)
    x0 = torch.randn(6, 4) * 0.3
    sigma, noise, s = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0, 80.0]), torch.randn(6, 4), torch.full((6,), 0.002)
    loss = TeacherRegressionLoss(teacher.denoise)
    exact = lambda x, t, s_, labels=None: teacher.denoise(x, t)  # noqa: E731
    assert torch.equal(loss(exact, x0, sigma, noise, s), torch.zeros(6))
    off = lambda x, t, s_, labels=None: teacher.denoise(x, t) + 0.1  # noqa: E731
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(loss(off, x0, sigma, noise, s), weight * 0.01, rtol=1e-5, atol=0)


def test_regression_brings_g_to_the_teacher_for_every_s():
    from ctm.digits import fit_digits_teacher
    teacher = fit_digits_teacher(n_components=3)
    images = torch.from_numpy(load_digits_images()[0][:256])
    torch.manual_seed(0)
    G = CTMPrecond(**tiny_songunet_kwargs(8, 1))
    before = copy.deepcopy(G).eval()
    regress_onto_teacher(G, teacher.denoise, images, 100, 32, 1e-2, torch.Generator().manual_seed(0), GRID)
    G.eval()
    g = torch.Generator().manual_seed(1)
    sigma = torch.tensor([0.05, 0.5, 2.0, 10.0]).repeat(8)
    x = images[:32] + sigma[:, None, None, None] * torch.randn(32, 1, 8, 8, generator=g)
    target = teacher.denoise(x.double(), sigma.double()).float()
    with torch.no_grad():
        for s in (sigma, torch.full_like(sigma, 0.002)):  # g(x, σ, s) ≈ D(x, σ) at s = σ and at s = σ_min
            err_before = ((before.g(x, sigma, s) - target) ** 2).mean()
            err_after = ((G.g(x, sigma, s) - target) ** 2).mean()
            assert err_after < 0.3 * err_before, (err_after, err_before)
