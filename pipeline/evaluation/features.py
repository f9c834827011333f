"""Feature sets for FID, each plugged into clean-fid as (custom_feat_extractor, custom_fn_resize, custom_image_tranform).

clean-fid hands every image to `custom_image_tranform` then `custom_fn_resize` as an HWC float array in [0, 255],
stacks the results NCHW and calls the extractor on the batch. Inception uses clean-fid's own "clean" resize
(PIL bicubic to 299×299); the digits network reads the 8×8 images as they are, so its resize keeps the size.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .digits_mlp import load_digits_mlp, weights_digest

DIGITS_NAME, INCEPTION_NAME = "digits-mlp-64", "inception-v3-2015-12-05"
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


@dataclass
class FeatureSet:
    extractor: Callable                 # clean-fid custom_feat_extractor: (N, C, h, w) float in [0, 255] -> (N, D)
    resize: Callable                    # clean-fid custom_fn_resize: (H, W, C) float in [0, 255] -> (h, w, C) float32
    transform: Callable | None          # clean-fid custom_image_tranform, applied before the resize
    quantize: bool                      # round pixels to integers first, as images saved to 8-bit PNG would be
    info: dict = field(default_factory=dict)


class DigitsFeatures(torch.nn.Module):
    """The 64-unit hidden layer of the shipped digits classifier, on 1×8×8 images in [0, 255]."""

    def __init__(self):
        super().__init__()
        self.mlp = load_digits_mlp()

    def forward(self, x):
        if tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"the digits features read 1×8×8 images, got {tuple(x.shape[1:])}; "
                             "use eval.features=inception for other datasets")
        return self.mlp.features(x.flatten(1).float() / 127.5 - 1)


def keep_size(img):
    """A clean-fid resize that leaves the image as it is (HWC float32)."""
    return np.asarray(img, dtype=np.float32)


def gray_to_rgb(img):
    """Inception reads three channels: repeat a single grey one."""
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def to_pixels(images, quantize=False):
    """[−1, 1] images -> float32 in [0, 255] (clean-fid's range), rounded to 8-bit levels when `quantize`."""
    x = ((images.float() + 1) * 127.5).clamp(0, 255)
    return x.round() if quantize else x


def digits_features(device="cpu"):
    net = DigitsFeatures().to(device)
    info = {"name": DIGITS_NAME, "description": "tanh hidden layer (64 units) of the shipped digits MLP "
            "64-256-64-10 (100% on sklearn digits); not comparable with Inception FID",
            "digest": weights_digest(net.mlp)[:16], "dim": 64, "resize": "none (8×8)", "quantize": False}
    return FeatureSet(net, keep_size, None, False, info)


def inception_file(path):
    """The local clean-fid Inception file from eval.inception_path (the file itself or its folder)."""
    if path is None:
        raise FileNotFoundError(f"eval.inception_path is not set: place {INCEPTION_FILE} (from {INCEPTION_URL}) on "
                                "every evaluation node and pass its path; nothing is downloaded here")
    p = Path(path)
    p = p / INCEPTION_FILE if p.is_dir() else p
    if p.name != INCEPTION_FILE or not p.is_file():
        raise FileNotFoundError(f"eval.inception_path: no {INCEPTION_FILE} at {p}; download it from {INCEPTION_URL} "
                                f"on a machine with internet and place it at {p.parent / INCEPTION_FILE} on every "
                                "evaluation node (clean-fid needs exactly that file name)")
    return p


def inception_features(path, device="cpu"):
    from cleanfid.inception_torchscript import InceptionV3W
    from cleanfid.resize import build_resizer
    file = inception_file(path)
    net = InceptionV3W(path=str(file.parent), download=False).to(device).eval()
    info = {"name": INCEPTION_NAME, "description": "clean-fid Inception (pool3, 2048) in 'clean' mode: "
            "PIL bicubic resize to 299, comparable with published clean-fid numbers",
            "digest": file_digest(file), "dim": 2048, "resize": "clean-fid clean (PIL bicubic 299)", "quantize": True}
    return FeatureSet(net, build_resizer("clean"), gray_to_rgb, True, info)


def check_features(cfg):
    """The errors `build_features` would raise, without loading anything: a missing Inception file, digits
    features on other data."""
    if cfg.eval.features == "inception":
        inception_file(cfg.eval.inception_path)
    elif cfg.data.name != "digits":
        raise ValueError(f"eval.features: the shipped digits features read only the 8x8 digits, not {cfg.data.name!r}; "
                         "set eval.features=inception and eval.inception_path")


def file_digest(path):
    """The first 16 hex digits of a weights file's sha256, read in blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def features_identity(cfg):
    """{"name", "digest"} of the feature network `cfg.eval.features` names, as its FeatureSet's info has them,
    without building the network."""
    check_features(cfg)
    if cfg.eval.features == "inception":
        return {"name": INCEPTION_NAME, "digest": file_digest(inception_file(cfg.eval.inception_path))}
    return {"name": DIGITS_NAME, "digest": weights_digest(load_digits_mlp())[:16]}


def build_features(cfg, device="cpu"):
    """The feature set `cfg.eval.features` names, on `device`."""
    check_features(cfg)
    if cfg.eval.features == "inception":
        return inception_features(cfg.eval.inception_path, device)
    return digits_features(device)
