"""Checkpoints: what save_checkpoint writes, load_student and resume read back, and what they refuse."""

import hashlib
import struct
import zipfile

import pytest
import torch

from jobs.train import config as job_config
from jobs.train import parser
from pipeline.checkpoint import (CHECKPOINT_FILE, DIGEST_FILE, DamagedCheckpointError, load_checkpoint, load_student,
                                 save_checkpoint)
from pipeline.config import load_config
from pipeline.teachers import build_teacher
from pipeline.train import loop
from pipeline.train.state import build_state, load_weights, resume, state_parts, student_kwargs


@pytest.fixture(scope="module")
def teacher():
    return build_teacher(load_config())


def config(*overrides):
    return load_config(overrides=["student.architecture=tiny", "student.init_steps=10", "train.distance=l2", "train.ema_rates=[0.9, 0.99]",
                                  *overrides])


def perturbed(cfg, teacher, seed):
    """A state whose every part differs from a fresh one (weights, EMAs, target, D, optimiser moments, step)."""
    state = build_state(cfg, student_kwargs(cfg, teacher), teacher, "cpu")
    g = torch.Generator().manual_seed(seed)
    for module in (state.G, state.G_target, state.D, *state.emas.values()):
        for p in module.parameters():
            p.data += 0.01 * torch.randn(p.shape, generator=g)
    for opt, module in ((state.opt_G, state.G), (state.opt_D, state.D)):
        for p in module.parameters():
            if p.requires_grad:
                p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    state.step = 17
    return state


def save(tmp_path, cfg, state):
    return save_checkpoint(tmp_path, **state_parts(state), config=cfg.to_dict(), rng={"train_seed": 0, "step": 17},
                           data={"mode": "online", "epoch": 0, "offset": 0})


def test_resume_restores_every_part(teacher, tmp_path):
    cfg = config("train.gan_start=0")
    state = perturbed(cfg, teacher, 1)
    assert save(tmp_path, cfg, state) == tmp_path / CHECKPOINT_FILE
    again = build_state(cfg, student_kwargs(cfg, teacher), teacher, "cpu")
    resume(again, load_checkpoint(tmp_path))
    assert again.step == 17
    for a, b in [(state.G, again.G), (state.G_target, again.G_target), (state.D, again.D),
                 *[(state.emas[r], again.emas[r]) for r in (0.9, 0.99)]]:
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v, w), k
    for a, b in [(state.opt_G, again.opt_G), (state.opt_D, again.opt_D)]:
        for s, t in zip(a.state_dict()["state"].values(), b.state_dict()["state"].values()):
            assert all(torch.equal(s[k], t[k]) for k in s)


def test_load_student_returns_the_ema_and_the_run_config(teacher, tmp_path):
    cfg = config()
    state = perturbed(config("train.gan_start=0"), teacher, 2)
    save(tmp_path, cfg, state)
    G, run_cfg = load_student(tmp_path / CHECKPOINT_FILE, ema_rate=0.99)
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    assert all(torch.equal(v, state.emas[0.99].state_dict()[k]) for k, v in G.state_dict().items())
    assert run_cfg.train.ema_rates == (0.9, 0.99) and run_cfg.student.architecture == "tiny"
    with pytest.raises(KeyError, match=r"\['0.9', '0.99'\]"):
        load_student(tmp_path, ema_rate=0.999)


def test_gan_stage_from_another_runs_checkpoint_takes_weights_only(teacher, tmp_path):
    """train.init_checkpoint: student, target and EMAs come over; D, optimisers and the step start fresh."""
    save(tmp_path, config(), perturbed(config("train.gan_start=0"), teacher, 3))
    parts = load_checkpoint(tmp_path)
    cfg = config("train.gan_start=0")
    state = build_state(cfg, student_kwargs(cfg, teacher), teacher, "cpu")
    fresh_D = {k: v.clone() for k, v in state.D.state_dict().items()}
    load_weights(state, parts)
    assert all(torch.equal(v, parts["student"][k]) for k, v in state.G.state_dict().items())
    assert all(torch.equal(v, parts["ema"]["0.9"][k]) for k, v in state.emas[0.9].state_dict().items())
    assert all(torch.equal(v, fresh_D[k]) for k, v in state.D.state_dict().items())
    assert state.step == 0 and not state.opt_G.state_dict()["state"]


def test_gan_stage_resets_the_target_to_the_first_runs_ema(teacher, tmp_path, monkeypatch):
    """The official second stage (python -m jobs.train --from-checkpoint DIR): G and the EMAs from the CTM+DSM run's
    checkpoint, θ⁻ from its 0.999 EMA (not its θ⁻), a fresh D and fresh optimisers, step 0."""
    first = config("train.ema_rates=[0.999, 0.9999]")
    save(tmp_path, first, perturbed(config("train.ema_rates=[0.999, 0.9999]", "train.gan_start=0"), teacher, 5))
    parts = load_checkpoint(tmp_path)
    sets = ["student.architecture=tiny", "student.init_steps=10", "train.distance=l2", "train.gan_start=0",
            "train.target_ema=0.9999"]
    args = parser().parse_args(["--from-checkpoint", str(tmp_path), *[a for s in sets for a in ("--set", s)]])
    cfg = job_config(args)
    assert (cfg.train.init_checkpoint, cfg.train.init_target) == (str(tmp_path), "ema_0.999")
    monkeypatch.setattr(loop.ray.train, "get_checkpoint", lambda: None)  # a new run: nothing of its own to resume
    state = build_state(cfg, student_kwargs(cfg, teacher), teacher, "cpu")
    fresh_D = {k: v.clone() for k, v in state.D.state_dict().items()}
    how, data = loop.restore(state, cfg, "cpu")
    same = lambda module, sd: all(torch.equal(v, sd[k]) for k, v in module.state_dict().items())
    assert same(state.G_target, parts["ema"]["0.999"]) and not same(state.G_target, parts["target"])
    assert same(state.G, parts["student"]) and same(state.emas[0.9999], parts["ema"]["0.9999"])
    assert same(state.D, fresh_D) and state.step == 0 and data is None and "ema 0.999" in how
    assert not state.opt_G.state_dict()["state"] and not state.opt_D.state_dict()["state"]
    with pytest.raises(ValueError, match=r"rates \['0.999', '0.9999'\]"):
        load_weights(state, parts, "ema_0.99")


def test_refusals(teacher, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint_0001000"):
        load_checkpoint(tmp_path / "nothing")
    cfg = config()
    save(tmp_path, cfg, perturbed(config("train.gan_start=0"), teacher, 4))
    parts = load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="GAN stage"):
        resume(build_state(cfg, student_kwargs(cfg, teacher), teacher, "cpu"), parts)
    bigger = dict(parts, student_kwargs={**parts["student_kwargs"], "model_channels": 32})
    with pytest.raises(ValueError, match="model_channels"):
        load_weights(build_state(cfg, student_kwargs(cfg, teacher), teacher, "cpu"), bigger)
    file = tmp_path / CHECKPOINT_FILE
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(DamagedCheckpointError, match="checkpoint.pt has sha256"):
        load_checkpoint(tmp_path)
    (tmp_path / DIGEST_FILE).unlink()
    with pytest.raises(DamagedCheckpointError, match="not a readable archive"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        save_checkpoint(tmp_path, step=1)


def tensor_offset(file, name):
    """Offset in checkpoint.pt of the middle byte of the zip record `name` (a tensor's storage)."""
    with zipfile.ZipFile(file) as archive:
        info = archive.getinfo(name)
    with open(file, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len + info.file_size // 2


def test_a_flipped_byte_in_a_tensor_is_refused_with_the_file_named(teacher, tmp_path):
    """checkpoint.sha256 (sha256sum format) is written beside checkpoint.pt; one flipped bit in a weight, which
    torch.load alone reads without a word, is refused. A checkpoint without a digest (written before digests) loads
    with a warning, and its zip CRC-32s still catch a flipped byte."""
    cfg = config()
    file = save(tmp_path, cfg, perturbed(config("train.gan_start=0"), teacher, 6))
    digest, name = (tmp_path / DIGEST_FILE).read_text().split()
    assert name == CHECKPOINT_FILE and digest == hashlib.sha256(file.read_bytes()).hexdigest()
    good = file.read_bytes()
    damaged = bytearray(good)
    damaged[tensor_offset(file, "archive/data/0")] ^= 0x10
    file.write_bytes(bytes(damaged))
    torch.load(file, weights_only=True)  # what training did before: the damage goes unnoticed
    with pytest.raises(DamagedCheckpointError, match=f"{file}.*sha256"):
        load_checkpoint(tmp_path)
    (tmp_path / DIGEST_FILE).unlink()
    with pytest.raises(DamagedCheckpointError, match="archive/data/0 fails its CRC-32"):
        load_checkpoint(tmp_path)
    file.write_bytes(good)
    with pytest.warns(UserWarning, match="no checkpoint.sha256"):
        assert load_checkpoint(tmp_path)["step"] == 17


def test_the_preflight_takes_a_checkpoint_of_this_student_and_refuses_another(teacher, tmp_path):
    """The student a checkpoint records (CTMPrecond's full constructor arguments) against the config's: the same tiny
    student passes; another width is named."""
    from pipeline.config import ConfigError
    from pipeline.preflight import check_init_checkpoint
    save(tmp_path, config(), perturbed(config("train.gan_start=0"), teacher, 7))
    cfg = config(f"train.init_checkpoint={tmp_path}")
    assert check_init_checkpoint(cfg, student_kwargs(cfg, teacher)).endswith("(step 17)")
    wider = {**student_kwargs(cfg, teacher), "model_channels": 64}
    with pytest.raises(ConfigError, match=r"its student differs from this config's in \['model_channels'\]"):
        check_init_checkpoint(cfg, wider)


def test_the_checkpoint_layout_names_folders_by_step_and_reads_the_step_without_the_weights(teacher, tmp_path):
    from pipeline.checkpoint import checkpoint_dir_name, checkpoint_dir_step, read_step, student_state
    assert checkpoint_dir_name(600) == "checkpoint_0000600" and checkpoint_dir_step("checkpoint_0000600") == 600
    folder = tmp_path / checkpoint_dir_name(17)
    state = perturbed(config("train.gan_start=0"), teacher, 4)
    save(folder, config(), state)
    assert read_step(folder) == read_step(folder / CHECKPOINT_FILE) == 17
    parts = load_checkpoint(folder)
    assert student_state(parts, 0, folder) is parts["student"] and student_state(parts, 0.9, folder) is parts["ema"]["0.9"]
    with pytest.raises(KeyError, match=r"holds EMAs at rates \['0.9', '0.99'\], not 0.5"):
        student_state(parts, 0.5, folder)
