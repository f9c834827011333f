"""Per-sample distances d(x, y) -> (B,) between image batches in [-1, 1] (the CTM loss metric, docs/method.md §3)."""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's VGG16 ImageNet state dict
LPIPS_LIN_FILE = "vgg.pth"  # lpips package, weights/v0.1/vgg.pth

VGG16_RELU_ENDS = (4, 9, 16, 23, 30)  # features[:i] ends at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


def l2(x, y):
    """Mean squared error per sample."""
    return (x - y).square().flatten(1).mean(dim=1)


def pseudo_huber(x, y, c=None):
    """sqrt(||x - y||^2 + c^2) - c; c = 0.00054 * sqrt(D) by default (Song & Dhariwal 2023, §3.3)."""
    if c is None:
        c = 0.00054 * math.sqrt(x[0].numel())
    return ((x - y).square().flatten(1).sum(dim=1) + c**2).sqrt() - c


def _weights_file(path, file_name, what, argument):
    if path is None or not Path(path).is_file():
        where = "was not given" if path is None else f"'{path}' does not exist"
        raise FileNotFoundError(
            f"LPIPS needs {what} '{file_name}', but {argument} {where}. It cannot be downloaded here: "
            f"place a copy of '{file_name}' on this machine and pass its path as {argument} "
            f"(lpips_{argument} in build_distance)."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


class LPIPS(nn.Module):
    """LPIPS distance, VGG16 variant (Zhang et al. 2018), with frozen weights read from local files.

    As in the official CTM code (piq 0.7.0 LPIPS, replace_pooling=True): inputs are bilinearly resized to `resize`
    and the VGG max-pools are replaced by average pools; set replace_pooling=False for the original lpips network.
    """

    def __init__(self, vgg_path, lin_path, resize=224, replace_pooling=True):
        import torchvision  # here, not at the top: importing it takes seconds in every Train worker that never uses it
        super().__init__()
        vgg_state = _weights_file(vgg_path, VGG16_FILE, "the torchvision VGG16 ImageNet weights", "vgg_path")
        lin_state = _weights_file(lin_path, LPIPS_LIN_FILE, "the LPIPS v0.1 linear-layer weights", "lin_path")
        with torch.device("meta"):  # no random init: every weight comes from the file
            vgg = torchvision.models.vgg16(weights=None).features[: VGG16_RELU_ENDS[-1]]
        features = {k.removeprefix("features."): v for k, v in vgg_state.items() if k.startswith("features.")}
        try:
            vgg.load_state_dict(features, assign=True)
        except RuntimeError as e:
            raise ValueError(f"'{vgg_path}' is not torchvision's VGG16 state dict: {e}") from e
        if replace_pooling:
            vgg = nn.Sequential(*[nn.AvgPool2d(2, 2) if isinstance(m, nn.MaxPool2d) else m for m in vgg])
        starts = (0,) + VGG16_RELU_ENDS[:-1]
        self.slices = nn.ModuleList(vgg[a:b] for a, b in zip(starts, VGG16_RELU_ENDS))
        for i, c in enumerate(LPIPS_CHANNELS):
            w = lin_state.get(f"lin{i}.model.1.weight")
            if w is None or w.shape != (1, c, 1, 1):
                found = "missing" if w is None else tuple(w.shape)
                raise ValueError(f"'{lin_path}': lin{i}.model.1.weight is {found}, expected shape (1, {c}, 1, 1)")
            self.register_buffer(f"w{i}", w.float())
        # lpips ScalingLayer on [-1, 1] = ImageNet mean/std normalisation of (x + 1) / 2 (piq's convention)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.resize = resize
        self.requires_grad_(False)
        self.eval()

    def features(self, x):
        """Unit-normalised (over channels) VGG activations at the five LPIPS layers."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise ValueError(f"LPIPS takes 1- or 3-channel images, got {x.shape[1]} channels")
        if self.resize is not None and x.shape[-2:] != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        h = (x - self.shift) / self.scale
        out = []
        for layer in self.slices:
            h = layer(h)
            out.append(h / (h.square().sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x, y):
        fx, fy = self.features(x), self.features(y)
        w = (self.w0, self.w1, self.w2, self.w3, self.w4)
        return sum(((a - b).square() * wi).sum(dim=1).mean(dim=(1, 2)) for a, b, wi in zip(fx, fy, w))


def build_distance(name, lpips_vgg_path=None, lpips_lin_path=None):
    """The distance callable d(x, y) -> (B,) named 'l2', 'pseudo_huber' or 'lpips'."""
    if name == "l2":
        return l2
    if name == "pseudo_huber":
        return pseudo_huber
    if name == "lpips":
        return LPIPS(lpips_vgg_path, lpips_lin_path)
    raise ValueError(f"unknown distance '{name}': choose 'l2', 'pseudo_huber' or 'lpips'")
