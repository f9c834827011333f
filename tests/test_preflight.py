"""The preflight of a paper config (what --dry-run prints): every file each stage needs is checked and listed, nothing
runs or is written."""

import re
from pathlib import Path

import pytest

from ctm.networks import build_edm_network, tiny_songunet_kwargs
from pipeline.config import load_config
from pipeline.preflight import InputError, preflight
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


def config(files, tmp_path, *extra):
    overrides = [f"{k}={v}" for k, v in files.items() if not k.startswith("train.discriminator_weights")]
    weights = {k.rsplit(".", 1)[-1]: str(v) for k, v in files.items() if k.startswith("train.discriminator_weights")}
    return load_config(CIFAR10_UNCOND, [*overrides, ("train.discriminator_weights", weights),
                                        f"cache.root={tmp_path / 'cache'}", "train.gan_start=10", *extra])


def test_a_paper_config_lists_every_file_and_runs_nothing(paper_files, tmp_path):
    lines = preflight(config(paper_files, tmp_path)).lines
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
        preflight(config(paper_files, tmp_path))


def test_every_missing_file_is_named_in_one_error(paper_files, tmp_path):
    gone = ["teacher.path", "train.lpips_vgg_path", "train.discriminator_weights.tf_efficientnet_lite0",
            "eval.inception_path"]
    for key in gone:
        paper_files[key].unlink()
    paper_files["data.path"] = tmp_path / "missing.tar.gz"
    with pytest.raises(InputError) as e:
        preflight(config(paper_files, tmp_path, f"train.init_checkpoint={tmp_path / 'run' / 'checkpoint_0000100'}"))
    message = str(e.value)
    assert message.startswith("6 inputs cannot be used: (1) FileNotFoundError: teacher.path: no EDM pickle at ")
    for key in [*gone, "data.path", "train.init_checkpoint"]:
        assert f"FileNotFoundError: {key}" in message, key
    assert len(e.value.errors) == 6 and "\n" not in message and not (tmp_path / "cache").exists()


def test_an_unreadable_init_checkpoint_is_refused(paper_files, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match=f"^train.init_checkpoint: {tmp_path / 'checkpoint.pt'} "):
        preflight(config(paper_files, tmp_path, f"train.init_checkpoint={tmp_path / 'checkpoint.pt'}"))


def test_images_of_another_shape_than_the_teachers_are_one_error_wherever_they_meet(tmp_path):
    """The preflight (of every stage, and so the dry run) and the cache's generation refuse them with the same error."""
    from conftest import make_gmm
    from pipeline.cache.generate import prepare
    from pipeline.config import EMBEDDED_DEFAULT, ConfigError
    from pipeline.teachers import configured_teacher_identity
    mixture = make_gmm(16)
    mixture.image_shape = (1, 4, 4)
    mixture.save(tmp_path / "teacher4x4.npz")
    cfg = load_config(EMBEDDED_DEFAULT, [f"teacher.path={tmp_path / 'teacher4x4.npz'}", f"cache.root={tmp_path / 'cache'}"])
    message = re.escape("config keys 'data.name' and 'teacher.path': digits images are (1, 8, 8), the teacher's are "
                        "(1, 4, 4); pair the teacher with data of its image size")
    with pytest.raises(ConfigError, match=message):
        preflight(cfg)
    with pytest.raises(ConfigError, match=message):
        prepare(cfg, configured_teacher_identity(cfg))
    assert not (tmp_path / "cache").exists()
