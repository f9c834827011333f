"""The dry run of a paper config: every file each stage needs is checked and listed, nothing runs or is written."""

from pathlib import Path

import pytest

from ctm.networks import build_edm_network, tiny_songunet_kwargs
from pipeline.config import load_config
from pipeline.dryrun import dry_run
from test_datasets import cifar_archive  # noqa: F401 (fixture)
from test_teachers_edm import write_edm_pickle

CIFAR10_UNCOND = Path(__file__).resolve().parents[1] / "jobs/configs/cifar10_uncond.yaml"


@pytest.fixture
def paper_files(tmp_path, cifar_archive):  # noqa: F811
    """cifar10_uncond.yaml's files: a tiny 32x32 EDM teacher pickle, a CIFAR-10 archive, the other weights as stand-ins
    (the dry run checks that they are there, it does not read them)."""
    net = build_edm_network(**tiny_songunet_kwargs(32, 3)).eval()
    files = {"teacher.path": write_edm_pickle(tmp_path / "edm.pkl", {"ema": net}, tiny_songunet_kwargs(32, 3)),
             "data.path": cifar_archive[0]}
    for key in ["train.lpips_vgg_path", "train.lpips_lin_path", "eval.inception_path",
                "train.discriminator_weights.tf_efficientnet_lite0",
                "train.discriminator_weights.deit_base_distilled_patch16_224"]:
        name = "inception-2015-12-05.pt" if key == "eval.inception_path" else key.rsplit(".", 1)[-1]
        files[key] = tmp_path / "weights" / name
        files[key].parent.mkdir(exist_ok=True)
        files[key].write_bytes(b"stand-in")
    return files


def config(files, tmp_path):
    overrides = [f"{k}={v}" for k, v in files.items() if not k.startswith("train.discriminator_weights")]
    weights = {k.rsplit(".", 1)[-1]: str(v) for k, v in files.items() if k.startswith("train.discriminator_weights")}
    return load_config(CIFAR10_UNCOND, [*overrides, ("train.discriminator_weights", weights),
                                        f"cache.root={tmp_path / 'cache'}", "train.gan_start=10"])


def test_a_paper_config_lists_every_file_and_runs_nothing(paper_files, tmp_path):
    lines = dry_run(config(paper_files, tmp_path))
    text = "\n".join(lines)
    for key in ["train.lpips_vgg_path", "train.lpips_lin_path", "train.discriminator_weights.tf_efficientnet_lite0",
                "train.discriminator_weights.deit_base_distilled_patch16_224"]:
        assert f"{key}: {paper_files[key]}" in text
    assert f"data: cifar10 {paper_files['data.path']} images (3, 32, 32)" in text
    assert f"eval: inception features from {paper_files['eval.inception_path']}" in text
    assert "generate will build it" in text and not (tmp_path / "cache").exists()


def test_a_missing_discriminator_file_is_named_with_where_it_comes_from(paper_files, tmp_path):
    paper_files["train.discriminator_weights.deit_base_distilled_patch16_224"].unlink()
    with pytest.raises(FileNotFoundError, match="train.discriminator_weights.deit_base_distilled_patch16_224: "
                                                "model.safetensors of timm/deit_base_distilled_patch16_224.fb_in1k"):
        dry_run(config(paper_files, tmp_path))
