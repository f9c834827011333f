from pathlib import Path

import pytest
import yaml

from ctm.discriminator import TIMM_WEIGHTS
from ctm.distances import LPIPS_LIN_FILE, VGG16_FILE
from pipeline.config import ConfigError, load_config
from pipeline.datasets import check_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"
PAPER = {  # docs/method.md §0, §3
    "cifar10_uncond.yaml": dict(N=18, K=17, batch=384, micro=16, target_ema=0.999, labels=False, gan_start=None,
                                teacher="edm-cifar10-32x32-uncond-vp.pkl", kind="edm", data="cifar10"),
    "cifar10_uncond_gan.yaml": dict(N=18, K=17, batch=528, micro=11, target_ema=0.9999, labels=False, gan_start=0,
                                    teacher="edm-cifar10-32x32-uncond-vp.pkl", kind="edm", data="cifar10"),
    "cifar10_cond.yaml": dict(N=18, K=17, batch=256, micro=16, target_ema=0.999, labels=True, gan_start=None,
                              teacher="edm-cifar10-32x32-cond-vp.pkl", kind="edm", data="cifar10"),
    "cifar10_cond_gan.yaml": dict(N=18, K=17, batch=528, micro=11, target_ema=0.999, labels=True, gan_start=0,
                                  teacher="edm-cifar10-32x32-cond-vp.pkl", kind="edm", data="cifar10"),
    "imagenet64.yaml": dict(N=40, K=39, batch=1440, micro=18, target_ema=0.999, labels=True, gan_start=None,
                            teacher="edm_imagenet64_ema.pt", kind="adm", data="imagenet64"),
}


def config_files():
    return sorted(p.name for p in CONFIGS.glob("*.yaml"))


def test_the_configs_that_should_be_there_are():
    assert set(config_files()) == {"digits.yaml", *PAPER}


@pytest.mark.parametrize("name", config_files())
def test_config_loads_and_names_no_machine_path(name):
    cfg = load_config(CONFIGS / name)
    raw = yaml.safe_load((CONFIGS / name).read_text())
    for section, values in raw.items():
        assert set(values) <= set(cfg.to_dict()[section]), section  # every key is a real key (load_config checks too)
    paths = [v for v in _leaves(cfg.to_dict()) if isinstance(v, str) and ("/" in v or v.endswith((".pkl", ".pth")))]
    assert paths and all(not p.startswith(("/", "~")) and ":" not in p for p in paths), paths


def _leaves(tree):
    for v in tree.values():
        yield from (_leaves(v) if isinstance(v, dict) else [v])


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_carry_the_official_hyperparameters(name):
    cfg, want = load_config(CONFIGS / name), PAPER[name]
    g, t, e = cfg.grid, cfg.train, cfg.eval
    assert (g.N, g.grid().K, g.sigma_min, g.sigma_max, g.rho) == (want["N"], want["K"], 0.002, 80.0, 7.0)
    assert cfg.teacher.kind == want["kind"] and cfg.teacher.path == f"weights/{want['teacher']}"
    assert cfg.data.name == want["data"] and cfg.data.hflip and cfg.data.use_labels == want["labels"]
    assert (t.batch_size, t.micro_batch, t.lr, t.lr_d, t.betas_d) == (want["batch"], want["micro"], 4e-4, 2e-3,
                                                                      (0.5, 0.9))
    assert t.target_ema == want["target_ema"] and t.gan_start == want["gan_start"] and 0.999 in t.ema_rates
    assert t.distance == "lpips" and t.lambda_dsm is None and t.lambda_gan is None
    assert (t.lpips_vgg_path, t.lpips_lin_path) == (f"weights/{VGG16_FILE}", f"weights/{LPIPS_LIN_FILE}")
    assert t.discriminator == "tf_efficientnet_lite0+deit_base_distilled_patch16_224"  # the official pair
    assert t.discriminator_weights == {k: f"weights/{k}.safetensors" for k in TIMM_WEIGHTS}
    assert (e.features, e.inception_path, e.num_samples, e.ema_rate) == \
        ("inception", "weights/inception-2015-12-05.pt", 50000, 0.999)
    assert 1 in e.nfe and 2 in e.nfe and 0.0 in e.gammas


@pytest.mark.parametrize("kind", ["uncond", "cond"])
def test_cifar10_gan_stage_starts_from_the_ctm_dsm_stage(kind):
    """Stage 2 starts from stage 1's last checkpoint with θ⁻ from its 0.999 EMA and reads the same cache."""
    one, two = (load_config(CONFIGS / f"cifar10_{kind}{suffix}.yaml") for suffix in ("", "_gan"))
    t = one.train
    assert two.train.init_checkpoint == f"{t.storage_path}/{t.run_name}/checkpoint_{t.steps:07d}"
    assert two.train.init_target == "ema_0.999" and two.train.run_name != t.run_name and one.train.init_checkpoint is None
    for section in ("teacher", "data", "grid", "cache", "student"):
        assert getattr(one, section) == getattr(two, section), section


def test_imagenet64_gan_stage_overrides_from_its_comment_are_valid():
    cfg = load_config(CONFIGS / "imagenet64.yaml", ["train.init_checkpoint=runs/imagenet64/ckpt", "train.gan_start=0",
                                                   "train.lr=8.0e-6", "train.batch_size=2112", "train.micro_batch=11",
                                                   "train.steps=30000"])
    assert cfg.train.lr == 8e-6 and cfg.train.batch_size // cfg.train.num_workers % cfg.train.micro_batch == 0


def test_digits_is_the_small_embedded_default():
    cfg = load_config(CONFIGS / "digits.yaml")
    assert (cfg.teacher.kind, cfg.data.name, cfg.student.architecture, cfg.train.teacher_mode) == \
        ("gmm", "digits", "tiny", "cached")
    assert cfg.grid.N == 18 and cfg.train.distance in ("l2", "pseudo_huber") and cfg.eval.features == "digits"
    assert not cfg.data.hflip and cfg.train.steps <= 1000 and cfg.train.lr_schedule == "cosine"
    assert cfg.student.init_from_teacher and cfg.train.discriminator == "pixels"  # a start as the teacher
    assert check_dataset(cfg.data)["image_shape"] == [1, 8, 8]


def test_a_typo_in_a_config_is_refused(tmp_path):
    text = (CONFIGS / "cifar10_uncond.yaml").read_text().replace("  lr: 4.0e-4", "  lrr: 4.0e-4")
    (tmp_path / "typo.yaml").write_text(text)
    with pytest.raises(ConfigError, match="train.lrr"):
        load_config(tmp_path / "typo.yaml")


@pytest.mark.parametrize("override, key", [
    ("grid.sigma_max=.inf", "grid.sigma_max"), ("grid.rho=0", "grid.rho"), ("grid.rho=-7", "grid.rho"),
    ("grid.sigma_min=-0.002", "grid.sigma_min"), ("grid.sigma_min=.nan", "grid.sigma_min"),
    ("train.batch_size=-64", "train.batch_size"), ("train.batch_size=0", "train.batch_size"),
    ("train.micro_batch=-8", "train.micro_batch"), ("train.lr=.inf", "train.lr"), ("train.lr_d=.nan", "train.lr_d"),
    ("train.lambda_dsm=-1", "train.lambda_dsm"), ("train.lambda_gan=.inf", "train.lambda_gan"),
    ("train.betas_d=[0.5, 1.0]", "train.betas_d"), ("train.betas_d=[0.9]", "train.betas_d"),
    ("train.ema_rates=[0.999, .nan]", "train.ema_rates"), ("train.gpus_per_worker=1.5", "train.gpus_per_worker"),
    ("train.seed=-1", "train.seed"), ("cache.num_records=-5", "cache.num_records"),
    ("cache.cpus_per_actor=.inf", "cache.cpus_per_actor"), ("eval.nfe=[1, two]", "eval.nfe"),
    ("eval.gammas=[0.0, .nan]", "eval.gammas"), ("eval.num_samples=1", "eval.num_samples"),
    ("eval.repeats=0", "eval.repeats"), ("eval.repeats=1.5", "eval.repeats"),
    ("eval.two_step=[[a, 1]]", "eval.two_step"), ("sweep.gamma=.inf", "sweep.gamma"),
    ("sweep.cpus_per_trial=.inf", "sweep.cpus_per_trial"), ("student.init_lr=.inf", "student.init_lr"),
    ("teacher.components=0", "teacher.components"), ("train.diffaug=color,blur", "train.diffaug"),
    ("student.channels=0", "student.channels"), ("train.gan_warmup=-100", "train.gan_warmup"),
    ("train.gan_warmup=1.5", "train.gan_warmup"),
])
def test_impossible_numbers_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(CONFIGS / "digits.yaml", [override])


def test_finite_values_at_the_edges_of_their_ranges_pass():
    cfg = load_config(CONFIGS / "digits.yaml", ["train.lambda_dsm=0", "train.lambda_gan=0", "train.betas_d=[0, 0.99]",
                                                "train.gpus_per_worker=2", "eval.gammas=[0, 1]", "grid.rho=0.5"])
    assert (cfg.train.lambda_dsm, cfg.train.betas_d, cfg.grid.rho) == (0.0, (0, 0.99), 0.5)


def test_the_mixture_teacher_has_no_network_for_a_teacher_architecture_student():
    with pytest.raises(ConfigError, match=r"'student.architecture' and 'teacher.kind'.*student.architecture=tiny.*"
                                          r"--config jobs/configs/digits.yaml"):
        load_config(overrides=["student.architecture=teacher"])
    assert load_config().student.architecture == "tiny"  # unset: the mixture's student is the tiny DDPM++ ...
    edm = ["teacher.kind=edm", "teacher.path=weights/edm.pkl"]
    assert load_config(overrides=edm).student.architecture == "teacher"  # ... a network teacher's is its own network
    assert load_config(overrides=[*edm, "student.architecture=tiny"]).student.architecture == "tiny"


def test_student_channels_widen_the_tiny_student_only():
    from pipeline.train.state import student_kwargs
    from pipeline.teachers import build_teacher
    cfg = load_config(CONFIGS / "digits.yaml", ["student.channels=24"])
    teacher = build_teacher(cfg)
    assert student_kwargs(cfg, teacher)["model_channels"] == 24
    assert student_kwargs(load_config(CONFIGS / "digits.yaml"), teacher)["model_channels"] == 32
    assert student_kwargs(load_config(), teacher)["model_channels"] == 16  # unset: the tiny DDPM++'s own
    with pytest.raises(ConfigError, match="'student.channels'.*tiny student's width.*'teacher'"):
        load_config(overrides=["teacher.kind=edm", "teacher.path=weights/edm.pkl", "student.channels=32"])


def test_broken_yaml_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: 4.0e-4\n  steps: [100,\ngrid:\n  N: 18\n")
    with pytest.raises(ConfigError, match=rf"config file {path} is not valid YAML at line 5, column 4: expected ','"):
        load_config(path)
    path.write_text("train:\n  lr: 1e-4\n    steps: 10\n")
    with pytest.raises(ConfigError, match=rf"{path} is not valid YAML at line 3, column 10: mapping values"):
        load_config(path)


def test_an_override_that_is_not_yaml_names_the_override():
    with pytest.raises(ConfigError, match=r"override 'eval.nfe=\[1, 2': the value is not valid YAML"):
        load_config(overrides=["eval.nfe=[1, 2"])
    with pytest.raises(ConfigError, match="config key 'train.run_name' must be str, got datetime.date"):
        load_config(overrides=["train.run_name=2024-01-01"])  # YAML reads a date; refused, not a TypeError


def test_renamed_keys_are_refused_naming_the_new_key_but_stored_configs_still_load(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("eval:\n  sweep_nfe: [1, 2]\n  sweep_two_step: [[9, 5]]\n")
    with pytest.raises(ConfigError, match=rf"'eval.sweep_nfe' is now 'eval.schedule_nfe', config key "
                                          rf"'eval.sweep_two_step' is now 'eval.schedule_two_step'; rename them in "
                                          rf"the config file {path}"):
        load_config(path)
    with pytest.raises(ConfigError, match="'eval.sweep_gammas' is now 'eval.schedule_gammas'; rename it in --set"):
        load_config(overrides=["eval.sweep_gammas=[0, 1]"])
    stored = load_config().to_dict()  # a checkpoint written before the rename stores the old keys
    del stored["eval"]["schedule_nfe"]
    stored["eval"]["sweep_nfe"] = [1, 3]
    assert load_config(base=stored).eval.schedule_nfe == (1, 3) and "sweep_nfe" in stored["eval"]
    assert load_config(overrides=["eval.schedule_nfe=[2]"]).eval.schedule_nfe == (2,)


def test_a_removed_key_is_unknown_but_stored_configs_holding_it_still_load():
    stored = load_config().to_dict()  # a checkpoint or run's config.yaml written while train.fail_at_step existed
    stored["train"]["fail_at_step"] = None
    assert load_config(base=stored).to_dict() == load_config().to_dict() and "fail_at_step" in stored["train"]
    with pytest.raises(ConfigError, match="unknown config key 'train.fail_at_step'"):
        load_config(overrides=["train.fail_at_step=3"])
