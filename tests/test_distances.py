import math

import pytest
import torch
import torch.nn.functional as F

from ctm.distances import LPIPS, build_distance, l2, pseudo_huber

CHANNELS = (64, 128, 256, 512, 512)
RELU_IDS = (3, 8, 15, 22, 29)
SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(3, 1, 1)  # lpips ScalingLayer
SCALE = torch.tensor([0.458, 0.448, 0.450]).view(3, 1, 1)
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Random VGG16 / LPIPS-lin weights saved in the torchvision and lpips file formats."""
    root = tmp_path_factory.mktemp("lpips")
    g = torch.Generator().manual_seed(0)
    features, c_in, i = {}, 3, 0  # torchvision's "features.<i>.weight" keys; the classifier is left out for size
    for c in VGG16_CONFIG:
        if c == "M":
            i += 1
            continue
        features[f"features.{i}.weight"] = torch.randn(c, c_in, 3, 3, generator=g) * math.sqrt(2 / (9 * c_in))
        features[f"features.{i}.bias"] = torch.randn(c, generator=g) * 0.1
        c_in, i = c, i + 2
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(CHANNELS)}
    torch.save(features, root / "vgg16-397923af.pth")
    torch.save(lin, root / "vgg.pth")
    return root / "vgg16-397923af.pth", root / "vgg.pth", features, lin


def reference_lpips(x, y, features, lin, avg_pool):
    """LPIPS written out layer by layer from the VGG16 state dict."""
    convs = [int(k.split(".")[1]) for k in features if k.endswith(".weight")]

    def feats(h):
        h = (h - SHIFT) / SCALE
        out = []
        for i in range(30):
            if i in convs:
                h = F.conv2d(h, features[f"features.{i}.weight"], features[f"features.{i}.bias"], padding=1)
            elif i in (4, 9, 16, 23):
                h = F.avg_pool2d(h, 2) if avg_pool else F.max_pool2d(h, 2)
            else:
                h = h.relu()
            if i in RELU_IDS:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = 0
    for i, (a, b) in enumerate(zip(feats(x), feats(y))):
        w = lin[f"lin{i}.model.1.weight"].view(1, -1, 1, 1)
        total = total + (w * (a - b) ** 2).sum(1).mean((1, 2))
    return total


def test_l2_hand_computed():
    x = torch.zeros(2, 1, 2, 2)
    y = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 2.0]).view(2, 1, 2, 2)
    assert torch.allclose(l2(x, y), torch.tensor([30 / 4, 4 / 4]))


def test_pseudo_huber_hand_computed():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.zeros(2, 3, 4, 4)
    y[0, 0, 0, 0], y[0, 1, 2, 3] = 3.0, 4.0  # ||x - y|| = 5
    assert torch.allclose(pseudo_huber(x, y, c=1.0), torch.tensor([math.sqrt(26) - 1, 0.0]))
    c = 0.00054 * math.sqrt(48)
    assert torch.allclose(pseudo_huber(x, y), torch.tensor([math.sqrt(25 + c * c) - c, 0.0]))


def test_pseudo_huber_quadratic_near_zero_linear_far():
    c = 0.1
    x = torch.zeros(1, 3, 8, 8)
    direction = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    direction = direction / direction.norm()
    for r, approx in [(1e-3, 1e-6 / (2 * c)), (1e3, 1e3 - c)]:  # r^2 / (2c) for r << c, r - c for r >> c
        d = pseudo_huber(x, r * direction, c=c).double()
        assert torch.allclose(d, torch.tensor([approx], dtype=torch.double), rtol=1e-3)


def test_lpips_matches_reference(weight_files):
    vgg_path, lin_path, features, lin = weight_files
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    for avg_pool in (True, False):
        d = LPIPS(vgg_path, lin_path, resize=None, replace_pooling=avg_pool)(x, y)
        assert torch.allclose(d, reference_lpips(x, y, features, lin, avg_pool), rtol=1e-4, atol=1e-6)
    ones = {k: torch.ones_like(v) for k, v in lin.items()}
    torch.save(ones, lin_path.parent / "ones.pth")
    d = LPIPS(vgg_path, lin_path.parent / "ones.pth", resize=None)(x, y)
    assert torch.allclose(d, reference_lpips(x, y, features, ones, True), rtol=1e-4, atol=1e-6)


def test_lpips_resizes_bilinear(weight_files):
    vgg_path, lin_path, features, lin = weight_files
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    up = lambda z: F.interpolate(z, size=40, mode="bilinear", align_corners=False)
    d = LPIPS(vgg_path, lin_path, resize=40)(x, y)
    assert torch.allclose(d, reference_lpips(up(x), up(y), features, lin, True), rtol=1e-4)
    assert build_distance("lpips", vgg_path, lin_path).resize == 224  # the official CTM setting


def test_lpips_properties(weight_files):
    vgg_path, lin_path, _, _ = weight_files
    lpips = LPIPS(vgg_path, lin_path, resize=16)
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(2, 3, 16, 16, generator=g) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    assert torch.equal(lpips(x, x), torch.zeros(2))
    d = lpips(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(d, lpips(y, x))
    d.sum().backward()
    assert x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert not any(p.requires_grad for p in lpips.parameters())
    assert all(p.grad is None for p in lpips.parameters())
    gray = torch.rand(2, 1, 16, 16, generator=g)
    assert torch.allclose(lpips(gray, -gray), lpips(gray.expand(-1, 3, -1, -1), -gray.expand(-1, 3, -1, -1)))


def test_lpips_missing_files_name_the_file(weight_files, tmp_path):
    vgg_path, lin_path, _, _ = weight_files
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        build_distance("lpips")
    with pytest.raises(FileNotFoundError, match=r"vgg\.pth.*cannot be downloaded"):
        build_distance("lpips", lpips_vgg_path=vgg_path, lpips_lin_path=tmp_path / "absent.pth")


def test_lpips_rejects_wrong_files(weight_files, tmp_path):
    vgg_path, lin_path, _, lin = weight_files
    torch.save({**lin, "lin2.model.1.weight": torch.ones(1, 3, 1, 1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"lin2.model.1.weight is \(1, 3, 1, 1\)"):
        LPIPS(vgg_path, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not torchvision's VGG16"):
        LPIPS(lin_path, lin_path)


def test_build_distance_names():
    x, y = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert torch.allclose(build_distance("l2")(x, y), torch.ones(2))
    assert torch.allclose(build_distance("pseudo_huber")(x, y), pseudo_huber(x, y))
    with pytest.raises(ValueError, match="unknown distance 'l1'"):
        build_distance("l1")
