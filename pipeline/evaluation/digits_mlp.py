"""The shipped digits feature network: an MLP 64-256-64-10 trained to 100% on scikit-learn's digits
(docs/method.md, "The embedded default's teacher and features").

Fréchet distance in pixel space cannot tell a good digits model from a bad one; in the 64-unit hidden layer of this
classifier it can. `digits_mlp.npz` beside this file holds the weights `train_digits_mlp()` produced (full-batch
Adam from a fixed seed, about a second on one CPU core); `write_digits_mlp(path)` rebuilds it.
"""

import hashlib
from pathlib import Path

import torch

from ctm.digits import load_digits_images, load_weights, save_weights

WEIGHTS_PATH = Path(__file__).with_name("digits_mlp.npz")
LAYERS = ("fc1", "fc2", "out")


class DigitsMLP(torch.nn.Module):
    """x (B, 64) in [−1, 1] -> logits (B, 10); `.features(x)` is the tanh of the 64-unit hidden layer."""

    def __init__(self, hidden=(256, 64), generator=None):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, hidden[0])
        self.fc2 = torch.nn.Linear(hidden[0], hidden[1])
        self.out = torch.nn.Linear(hidden[1], 10)
        if generator is not None:
            with torch.no_grad():
                for name in LAYERS:
                    layer = getattr(self, name)
                    bound = layer.in_features ** -0.5  # PyTorch's default U(±1/√fan_in), from our own generator
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    layer.bias.uniform_(-bound, bound, generator=generator)

    def features(self, x):
        return torch.tanh(self.fc2(torch.tanh(self.fc1(x))))

    def forward(self, x):
        return self.out(self.features(x))


def train_digits_mlp(seed=0, steps=300, lr=3e-3):
    """Full-batch Adam on all 1,797 digits, on one CPU thread so that the summation order (hence every weight) does
    not depend on the machine's core count."""
    images, labels = load_digits_images()
    x, y = torch.from_numpy(images.reshape(len(images), -1)), torch.from_numpy(labels)
    net = DigitsMLP(generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    accuracy = (net(x).argmax(1) == y).float().mean().item()
    if accuracy < 1.0:
        raise RuntimeError(f"the digits MLP reached only {accuracy:.4f} training accuracy; expected 1.0")
    return net.eval().requires_grad_(False)


def write_digits_mlp(path=WEIGHTS_PATH, **train_kwargs):
    net = train_digits_mlp(**train_kwargs)
    save_weights(net, path)
    return net


def load_digits_mlp(path=WEIGHTS_PATH):
    net = load_weights(DigitsMLP(), path, "python -c 'from pipeline.evaluation.digits_mlp import write_digits_mlp; "
                                          "write_digits_mlp()'")
    return net.eval().requires_grad_(False)


def weights_digest(net):
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()
