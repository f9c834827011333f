import numpy as np
import pytest
import torch
from cleanfid.fid import get_folder_features

from ctm.digits import load_digits_images
from pipeline.config import load_config
from pipeline.evaluation.digits_mlp import load_digits_mlp, train_digits_mlp
from pipeline.evaluation.features import (INCEPTION_FILE, build_features, check_features, digits_features,
                                          inception_features, keep_size, to_pixels)
from pipeline.evaluation.fid import cleanfid_features, image_batches


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits_images()
    return images, labels


def test_shipped_digits_network_classifies_every_digit(digits):
    images, labels = digits
    net = load_digits_mlp()
    logits = net(torch.from_numpy(images).flatten(1))
    assert (logits.argmax(1).numpy() == labels).all()


def test_training_function_rebuilds_the_shipped_features(digits):
    x = torch.from_numpy(digits[0]).flatten(1)
    rebuilt, shipped = train_digits_mlp().features(x), load_digits_mlp().features(x)
    assert (rebuilt - shipped).abs().max() < 1e-4


def test_cleanfid_generator_path_feeds_8x8_digits_unresized(digits):
    images = digits[0][:50]
    fs = digits_features()
    feats = cleanfid_features(image_batches(images, 20), 50, fs, 20)
    direct = fs.extractor.mlp.features(torch.from_numpy(images).flatten(1)).numpy()
    assert feats.shape == (50, 64)
    np.testing.assert_allclose(feats, direct, atol=1e-5)


def test_cleanfid_folder_path_gives_the_same_features(digits, tmp_path):
    images = digits[0][:30]
    pixels = to_pixels(torch.from_numpy(images)).numpy()
    for i, img in enumerate(pixels):
        np.save(tmp_path / f"{i:03d}.npy", img.transpose(1, 2, 0))  # HWC float in [0, 255], as clean-fid loads .npy
    fs = digits_features()
    folder = get_folder_features(str(tmp_path), fs.extractor, num_workers=0, batch_size=16, device=torch.device("cpu"),
                                 mode="clean", custom_fn_resize=keep_size, verbose=False)
    direct = fs.extractor.mlp.features(torch.from_numpy(images).flatten(1)).numpy()
    np.testing.assert_allclose(folder, direct, atol=1e-5)


def test_digits_features_refuse_other_image_shapes():
    with pytest.raises(ValueError, match="1×8×8"):
        digits_features().extractor(torch.zeros(2, 3, 32, 32))


class _PoolLayers(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1).repeat(1, 683)[:, :2048]


class _FakeInception(torch.nn.Module):
    """Stands in for the TorchScript Inception: `.layers` maps (B, 3, 299, 299) to (B, 2048) channel means."""

    def __init__(self):
        super().__init__()
        self.layers = _PoolLayers()

    def forward(self, x):
        return self.layers(x)


def test_inception_path_runs_through_cleanfid_wrapper(digits, tmp_path):
    torch.jit.script(_FakeInception()).save(str(tmp_path / INCEPTION_FILE))
    fs = inception_features(tmp_path)
    images = digits[0][:4]
    feats = cleanfid_features(image_batches(images, 4), 4, fs, 4)
    assert feats.shape == (4, 2048)
    np.testing.assert_allclose(feats[:, 0], feats[:, 1], atol=1e-6)  # the grey channel is repeated into RGB
    expected = (to_pixels(torch.from_numpy(images), quantize=True).mean((1, 2, 3)).numpy() - 128) / 128
    np.testing.assert_allclose(feats[:, 0], expected, atol=0.02)  # a 299×299 bicubic resize keeps the mean
    assert fs.info["name"] == "inception-v3-2015-12-05" and fs.quantize


def test_missing_inception_file_names_the_file_and_where(tmp_path):
    cfg = load_config(overrides=["eval.features=inception", f"eval.inception_path={tmp_path}"])
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILE) as e:
        build_features(cfg)
    assert str(tmp_path) in str(e.value) and "nvlabs-fi-cdn" in str(e.value)
    (tmp_path / "inception.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="exactly that file name"):
        check_features(load_config(overrides=["eval.features=inception", f"eval.inception_path={tmp_path}/inception.pt"]))


def test_digits_features_on_other_data_is_a_clear_error():
    cfg = load_config(overrides=["data.name=cifar10", "data.path=somewhere"])
    with pytest.raises(ValueError, match="eval.features=inception"):
        check_features(cfg)
