import pytest
import torch

from ctm.diffaug import color, cutout, diff_augment, random_cutout, random_translation, translate


def gen(seed):
    return torch.Generator().manual_seed(seed)


def zero_runs(line):
    """Lengths of the zero runs at the start and end of a 1-D 0/1 line, and whether the ones between are contiguous."""
    nonzero = line.nonzero().flatten()
    first, last = nonzero.min().item(), nonzero.max().item()
    return first, len(line) - 1 - last, bool(line[first : last + 1].all())


def test_shapes_gradients_and_identity():
    x = (torch.rand(4, 3, 16, 16, generator=gen(0)) * 2 - 1).requires_grad_(True)
    y = diff_augment(x, generator=gen(1))
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad.abs().sum() > 0
    assert diff_augment(x, policy="") is x
    with pytest.raises(ValueError, match="'colour'"):
        diff_augment(x, policy="colour,cutout")


def test_determinism_and_per_sample_randomness():
    x = torch.rand(1, 3, 16, 16, generator=gen(0)).expand(6, -1, -1, -1) * 2 - 1
    a, b = diff_augment(x, generator=gen(7)), diff_augment(x, generator=gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, diff_augment(x, generator=gen(8)))
    assert not torch.equal(a[0], a[1])


def test_color_closed_form():
    x = torch.rand(5, 3, 8, 8, generator=gen(0)) * 2 - 1
    g = gen(3)
    brightness, saturation, contrast = (torch.rand(5, 1, 1, 1, generator=g) for _ in range(3))
    y = x + brightness - 0.5
    y = (y - y.mean(1, keepdim=True)) * 2 * saturation + y.mean(1, keepdim=True)
    y = (y - y.mean((1, 2, 3), keepdim=True)) * (contrast + 0.5) + y.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(color(x, gen(3)), y, atol=1e-6)
    gray = torch.full((5, 3, 8, 8), 0.25)  # saturation and contrast leave a constant grey image alone
    shift = color(gray, gen(4)) - gray
    assert torch.allclose(shift, shift[:, :1, :1, :1].expand_as(shift), atol=1e-6)
    assert (shift.abs() <= 0.5).all() and shift.std() > 0


def test_translate_exact():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5) + 1
    y = translate(x, torch.tensor([[1, -2], [0, 0]]))
    expected = torch.zeros(4, 5)
    expected[1:, :3] = x[0, 0, :3, 2:]
    assert torch.equal(y[0, 0], expected)
    assert torch.equal(y[1], x[1])


def test_random_translation_on_constant_image():
    x = torch.ones(300, 1, 16, 16)
    y = random_translation(x, ratio=0.125, generator=gen(0))  # shifts in {-2, ..., 2}
    shifts = set()
    for mask in y[:, 0]:
        top, bottom, rows_ok = zero_runs(mask.amax(1))
        left, right, cols_ok = zero_runs(mask.amax(0))
        assert rows_ok and cols_ok and top * bottom == 0 and left * right == 0
        assert mask.sum() == (16 - top - bottom) * (16 - left - right)  # a rectangle of ones
        shifts.add((top - bottom, left - right))
    assert shifts == {(i, j) for i in range(-2, 3) for j in range(-2, 3)}


def test_cutout_exact_square():
    x = torch.ones(1, 2, 10, 10)
    y = cutout(x, torch.tensor([[5, 3]]), (4, 4))
    expected = torch.ones(10, 10)
    expected[3:7, 1:5] = 0
    assert torch.equal(y[0, 0], expected) and torch.equal(y[0, 1], expected)


def test_random_cutout_zeroes_a_clipped_square():
    x = torch.ones(200, 3, 32, 32)
    y = random_cutout(x, ratio=0.2, generator=gen(0))  # side int(6.4 + 0.5) = 6
    interior = 0
    for sample in y:
        assert torch.equal(sample[0], sample[1]) and torch.equal(sample[0], sample[2])
        zeros = sample[0] == 0
        rows, cols = zeros.any(1).nonzero().flatten(), zeros.any(0).nonzero().flatten()
        n_rows, n_cols = len(rows), len(cols)
        assert zeros.sum() == n_rows * n_cols and n_rows <= 6 and n_cols <= 6  # a rectangle
        assert n_rows == 6 or rows.min() == 0 or rows.max() == 31  # full side unless clipped at the border
        assert n_cols == 6 or cols.min() == 0 or cols.max() == 31
        if n_rows == n_cols == 6:
            interior += 1
            assert zeros.float().mean() == 36 / 1024
    assert interior > 100
