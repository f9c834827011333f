"""The digits discriminator's frozen feature network: a small CNN classifier trained on scikit-learn's digits, the
digits counterpart of the ImageNet backbones that Projected GAN (and so CTM's discriminator) reads.

Its trunk is `TinyFeatureNetwork`'s (four stride-2 conv stages on the digits resized to 32 pixels); a linear layer on
the pooled last stage classifies. It is not the evaluation's feature network (the MLP of
pipeline/evaluation/digits_mlp.py): another architecture, trained apart, on translated digits. `digits_cnn.npz`
beside this file holds the trunk weights `train_digits_cnn()` produced; `write_digits_cnn(path)` rebuilds them.
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from ctm.digits import load_digits_images, load_weights, save_weights
from ctm.discriminator import TinyFeatureNetwork

WEIGHTS_PATH = Path(__file__).with_name("digits_cnn.npz")
WIDTHS = (16, 32, 64, 128)
RESOLUTION = 32


class DigitsCNN(torch.nn.Module):
    """x (B, 1, 8, 8) in [−1, 1] -> logits (B, 10): the trunk's last map, averaged over space, then a linear layer."""

    def __init__(self, seed=0):
        super().__init__()
        self.trunk = TinyFeatureNetwork(1, WIDTHS, RESOLUTION, trainable=True, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.out = torch.nn.Linear(WIDTHS[-1], 10)

    def forward(self, x):
        return self.out(self.trunk(x)[-1].mean((2, 3)))


def shift(x, generator, pixels=1):
    """Each image translated by up to `pixels` in x and y (zero padding at −1, the digits' background)."""
    padded = F.pad(x, (pixels,) * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * pixels + 1, (2, len(x)), generator=generator).tolist()
    H, W = x.shape[-2:]
    return torch.stack([p[:, j:j + H, i:i + W] for p, i, j in zip(padded, dx, dy)])


def train_digits_cnn(seed=0, steps=400, lr=3e-3, batch=256):
    """Adam on minibatches of translated digits, on one CPU thread so that every weight is the same on any machine."""
    images, labels = load_digits_images()
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    net, g = DigitsCNN(seed), torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            i = torch.randint(0, len(x), (batch,), generator=g)
            loss = F.cross_entropy(net(shift(x[i], g)), y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            accuracy = (net(x).argmax(1) == y).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    if accuracy < 0.98:
        raise RuntimeError(f"the digits CNN reached only {accuracy:.4f} training accuracy; expected at least 0.98")
    return net.eval().requires_grad_(False)


def write_digits_cnn(path=WEIGHTS_PATH, **train_kwargs):
    net = train_digits_cnn(**train_kwargs)
    save_weights(net.trunk, path)
    return net


def digits_feature_network(path=WEIGHTS_PATH):
    """The frozen trunk with the shipped weights: a FeatureNetwork of four maps (16, 8, 4, 2 pixels)."""
    return load_weights(TinyFeatureNetwork(1, WIDTHS, RESOLUTION), path,
                        "python -c 'from ctm.digits_cnn import write_digits_cnn; write_digits_cnn()'")
