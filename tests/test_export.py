"""The exported student (pipeline.export, jobs.export) and sampling without Ray (jobs.sample)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ctm.networks import tiny_songunet_kwargs
from ctm.student import CTMPrecond, build_ctm_student
from jobs.export import main as export_main
from jobs.sample import main as sample_main
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.config import load_config
from pipeline.export import export_student, load_checkpoint_student, load_export, read_export_info

REPO = Path(__file__).resolve().parents[1]
GRID = {"N": 12, "sigma_min": 0.004, "sigma_max": 40.0, "rho": 5.0}  # not the defaults: samplers must read the run's


def make_checkpoint(directory, label_dim=0, junk=0):
    """A tiny student's checkpoint at step 11: EMA 0.999 differs from the online weights, the grid is GRID, and the
    discriminator and optimiser parts hold `junk` float32s each."""
    torch.manual_seed(0)
    G = build_ctm_student(**tiny_songunet_kwargs(8, 1, label_dim))
    online = G.state_dict()
    gen = torch.Generator().manual_seed(1)
    params = {name for name, _ in G.named_parameters()}
    ema = {k: v + 0.01 * torch.randn(v.shape, generator=gen) if k in params else v for k, v in online.items()}
    config = load_config().to_dict()
    config["grid"].update(GRID)
    return save_checkpoint(directory, step=11, config=config, student_kwargs=G.init_kwargs, student=online,
                           target=online, ema={"0.999": ema, "0.99": online}, discriminator={"w": torch.zeros(junk)},
                           opt_G={"state": {0: {"exp_avg": torch.zeros(junk)}}}, opt_D=None, rng={}, data={}).parent


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny network runs fastest on one thread, and the suite shares two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def checkpoint(tmp_path):
    return make_checkpoint(tmp_path / "digits" / "checkpoint_0000011")


@pytest.fixture
def conditional(tmp_path):
    return make_checkpoint(tmp_path / "cond" / "checkpoint_0000011", label_dim=10)


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def sample(capsys, source, out, *args):
    assert sample_main([*source, "--out", str(out), *args]) == 0, capsys.readouterr().err
    return np.load(out)


def test_export_holds_the_chosen_ema_bit_for_bit_and_its_configuration(checkpoint, tmp_path, capsys):
    out = tmp_path / "student.safetensors"
    assert export_main(["--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert f"exported: {out} (step 11, EMA 0.999" in capsys.readouterr().out
    parts = load_checkpoint(checkpoint)
    tensors = load_file(out)
    assert tensors.keys() == parts["ema"]["0.999"].keys()
    assert all(torch.equal(tensors[k], v) for k, v in parts["ema"]["0.999"].items())
    assert not all(torch.equal(tensors[k], v) for k, v in parts["student"].items())  # the EMA, not θ
    G, info = load_export(out)
    assert all(torch.equal(v, tensors[k]) for k, v in G.state_dict().items()) and not G.training
    assert info == {"ctm_export_version": 1, "student_kwargs": json.loads(json.dumps(parts["student_kwargs"])),
                    "ema_rate": 0.999, "grid": GRID, "step": 11, "dataset": "digits",
                    "checkpoint": "digits/checkpoint_0000011",
                    "checkpoint_sha256": hashlib.sha256((checkpoint / "checkpoint.pt").read_bytes()).hexdigest(),
                    "schedules": {}}
    with safe_open(out, framework="pt") as f:
        metadata = f.metadata()
    assert {k: json.loads(v) for k, v in metadata.items()} == info == read_export_info(out)

    online = tmp_path / "online.safetensors"
    assert export_main(["--checkpoint", str(checkpoint / "checkpoint.pt"), "--ema-rate", "0",
                        "--out", str(online)]) == 0
    assert all(torch.equal(load_file(online)[k], v) for k, v in parts["student"].items())
    assert read_export_info(online)["ema_rate"] == 0


def test_the_file_loads_in_plain_pytorch(checkpoint, tmp_path):
    """docs/export.md's recipe: CTMPrecond from the metadata, then the state dict."""
    out, _ = export_student(checkpoint, 0.999, tmp_path / "student.safetensors")
    with safe_open(out, framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    G = CTMPrecond(**meta["student_kwargs"])
    G.load_state_dict(load_file(out))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(G.eval()(x, 40.0, 0.004), load_export(out)[0](x, 40.0, 0.004))


SETTINGS = [["--nfe", "1", "--gamma", "0"], ["--nfe", "2", "--gamma", "0"], ["--nfe", "2", "--gamma", "0.5"],
            ["--two-step", "9", "5"]]


def test_checkpoint_and_export_give_the_same_samples(checkpoint, tmp_path, capsys):
    exported, _ = export_student(checkpoint, 0.999, tmp_path / "student.safetensors")
    for setting in SETTINGS:
        a = sample(capsys, ["--checkpoint", str(checkpoint)], tmp_path / "a.npz", "--num", "6", "--seed", "3", *setting)
        b = sample(capsys, ["--export", str(exported)], tmp_path / "b.npz", "--num", "6", "--seed", "3", *setting)
        assert a["images"].dtype == np.uint8 and a["images"].shape == (6, 8, 8, 1)
        assert np.array_equal(a["images"], b["images"]) and (a["labels"] == -1).all(), setting
        c = sample(capsys, ["--export", str(exported)], tmp_path / "c.npz", "--num", "6", "--seed", "4", *setting)
        assert not np.array_equal(a["images"], c["images"]), setting


def test_one_step_sample_is_the_jump_from_the_runs_sigma_max(checkpoint, tmp_path, capsys):
    """NFE 1, γ = 0: x = G(σ_max z, σ_max, σ_min) with the run's σ_max = 40 and σ_min = 0.004, z from the seed."""
    images = sample(capsys, ["--checkpoint", str(checkpoint)], tmp_path / "a.npz", "--num", "5", "--seed", "7")
    images = images["images"]
    G, _ = load_checkpoint_student(checkpoint)
    z = torch.randn((5, 1, 8, 8), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        x = G(z * 40.0, 40.0, 0.004).clamp(-1, 1)
    expected = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(images, expected)


def test_class_conditional_labels(conditional, tmp_path, capsys):
    source = ["--checkpoint", str(conditional), "--num", "6"]
    fixed = sample(capsys, source, tmp_path / "fixed.npz", "--labels", "3")
    assert fixed["labels"].tolist() == [3] * 6
    each = sample(capsys, source, tmp_path / "each.npz", "--labels", "3", "1", "4", "1", "5", "9")
    assert each["labels"].tolist() == [3, 1, 4, 1, 5, 9] and np.array_equal(each["images"][0], fixed["images"][0])
    drawn = [sample(capsys, source, tmp_path / f"r{i}.npz", "--seed", str(s))["labels"]
             for i, s in enumerate((0, 0, 1))]
    assert np.array_equal(drawn[0], drawn[1]) and not np.array_equal(drawn[0], drawn[2])
    assert set(drawn[0]) <= set(range(10))
    assert sample_main([*source, "--labels", "3", "--out", str(tmp_path / "folder")]) == 0
    assert sorted(p.relative_to(tmp_path / "folder").as_posix() for p in (tmp_path / "folder").rglob("*.png")) == \
        [f"3/{i:06d}.png" for i in range(6)]


def test_png_grid_and_folder(checkpoint, tmp_path, capsys):
    source = ["--checkpoint", str(checkpoint), "--num", "4", "--nfe", "2"]
    assert sample_main([*source, "--out", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size == (4 * 19, 4 * 19)  # 2×2 tiles of 8 px, 1 px borders, scale 4
    assert sample_main([*source, "--out", str(tmp_path / "pngs") + "/"]) == 0
    npz = sample(capsys, source, tmp_path / "a.npz")
    for i in range(4):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "pngs" / f"{i:06d}.png")), npz["images"][i, ..., 0])


def test_relative_and_absolute_paths(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert export_main(["--checkpoint", "digits/checkpoint_0000011"]) == 0  # default name, in the working directory
    default = tmp_path / "digits_checkpoint_0000011_ema0.999.safetensors"
    assert default.is_file()
    assert export_main(["--checkpoint", str(checkpoint), "--out", "sub/rel.safetensors"]) == 0
    assert export_main(["--checkpoint", "digits/checkpoint_0000011", "--out", "sub"]) == 0  # into a folder
    assert export_main(["--checkpoint", "digits/checkpoint_0000011", "--out", "new/"]) == 0  # into a new folder
    for other in (tmp_path / "sub" / default.name, tmp_path / "sub" / "rel.safetensors",
                  tmp_path / "new" / default.name):
        assert read_export_info(other) == read_export_info(default)
        assert all(torch.equal(v, load_file(default)[k]) for k, v in load_file(other).items())
    rel = sample(capsys, ["--export", "sub/rel.safetensors"], "out/rel.npz")
    absolute = sample(capsys, ["--checkpoint", str(checkpoint)], tmp_path / "abs.npz")
    assert np.array_equal(rel["images"], absolute["images"])


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "nowhere"], "no training checkpoint at nowhere"),
    (["--ema-rate", "0.5"], "holds EMAs at rates ['0.99', '0.999'], not 0.5"),
    (["--out", "{file}/student.safetensors"], "pass --out a path in a writable folder"),
])
def test_export_refuses_bad_input_with_one_line(checkpoint, tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("")
    args = [a.format(file=tmp_path / "file") for a in args]
    argv = (["--checkpoint", str(checkpoint)] if "--checkpoint" not in args else []) + args
    assert export_main(argv) == 2
    assert message in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "file"]


def test_a_damaged_checkpoint_is_refused(checkpoint, tmp_path, capsys):
    data = bytearray((checkpoint / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (checkpoint / "checkpoint.pt").write_bytes(bytes(data))
    assert export_main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "s.safetensors")]) == 2
    assert "is damaged: checkpoint.pt has sha256" in one_error_line(capsys)
    assert sample_main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "a.npz")]) == 2
    assert "is damaged" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]


def test_a_failed_write_leaves_no_file(checkpoint, tmp_path, monkeypatch, capsys):
    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pipeline.storage.os.fsync", full_disk)  # the bytes went out, the disk refused them
    assert export_main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out" / "s.safetensors")]) == 1
    assert "No space left on device" in one_error_line(capsys)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--export", "{tmp}/missing.safetensors"], "no exported student at"),
    (["--export", "{tmp}/plain.safetensors"], "not a CTM student export"),
    (["--export", "{tmp}/digits/checkpoint_0000011/checkpoint.pt"], "is not a safetensors file"),
    (["--checkpoint", "{tmp}/nowhere"], "no training checkpoint at"),
    (["--checkpoint", "{ckpt}", "--ema-rate", "0.5"], "not 0.5"),
    (["--export", "{export}", "--ema-rate", "0.999"], "drop --ema-rate"),
    (["--checkpoint", "{ckpt}", "--two-step", "11", "5"], "0 < I2 <= I1 < N-1 = 11"),
    (["--checkpoint", "{ckpt}", "--two-step", "9", "5", "--nfe", "3"], "drop --nfe and --gamma"),
    (["--checkpoint", "{ckpt}", "--gamma", "1.5"], "0 <= --gamma <= 1"),
    (["--checkpoint", "{ckpt}", "--num", "0"], "must be positive"),
    (["--checkpoint", "{ckpt}", "--labels", "3"], "unconditional (label_dim 0): drop --labels"),
    (["--checkpoint", "{ckpt}", "--num", "4", "--labels", "1", "2"], "one per image (4), got 2"),
    (["--checkpoint", "{ckpt}", "--out", "{tmp}/x.jpg"], "write a .png grid, an .npz, or a folder"),
])
def test_sample_refuses_bad_input_with_one_line(checkpoint, tmp_path, capsys, args, message):
    save_file({"w": torch.zeros(1)}, tmp_path / "plain.safetensors")
    export, _ = export_student(checkpoint, 0.999, tmp_path / "student.safetensors")
    args = [a.format(tmp=tmp_path, ckpt=checkpoint, export=export) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "out.npz")]
    assert sample_main([*args, *out]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out.npz").exists()


def test_conditional_labels_outside_the_classes(conditional, tmp_path, capsys):
    assert sample_main(["--checkpoint", str(conditional), "--labels", "10", "--out", str(tmp_path / "a.npz")]) == 2
    assert "this student has classes 0..9" in one_error_line(capsys)


SAMPLE_AND_MEASURE = """
import json, resource, sys
from jobs.sample import main
small, large, out = sys.argv[1:]
main(["--checkpoint", small, "--num", "4", "--device", "cpu", "--out", out])  # imports and first-call costs
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = main(["--checkpoint", large, "--num", "4", "--device", "cpu", "--out", out])
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"code": code, "grown_mib": grown / 1024, "modules": [m for m in sys.modules
                  if m.split(".")[0] == "ray" or m in ("ctm.discriminator", "pipeline.train.state")]}))
"""


@pytest.mark.slow
def test_sampling_reads_only_the_student(tmp_path):
    """A checkpoint whose discriminator and optimiser parts hold 2 × 64 MiB: sampling from it grows the process by
    far less than that (the checkpoint is memory-mapped and only the EMA's tensors are read), imports no Ray, builds
    no discriminator."""
    small = make_checkpoint(tmp_path / "run" / "checkpoint_0000001")
    large = make_checkpoint(tmp_path / "run" / "checkpoint_0000011", junk=16 * 2**20)
    cmd = [sys.executable, "-c", SAMPLE_AND_MEASURE, str(small), str(large), str(tmp_path / "a.npz")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stdout = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(stdout.splitlines()[-1])
    assert result["code"] == 0 and result["modules"] == []
    assert result["grown_mib"] < 32, result


def test_an_export_carries_the_searched_schedules_of_its_weights(checkpoint, tmp_path, capsys):
    """schedules.json beside the checkpoint goes into the export (entries searched with the exported EMA only), and
    `--schedule best` samples it from either source alike."""
    from ctm.sampling import gamma_steps
    from ctm.schedule import Grid
    t_steps, s_steps = gamma_steps(2, 0.6, Grid(12, 0.004, 40.0, 7.0))
    entry = {"nfe": 2, "gamma": 0.6, "sigmas": [t_steps[1]], "fid": 0.5, "ema_rate": 0.999, "features": "digits",
             "num_samples": 100, "seed": 0, "t_steps": list(t_steps), "s_steps": list(s_steps), "search": {}}
    other = {**entry, "nfe": 3, "ema_rate": 0.9999}
    (Path(checkpoint) / "schedules.json").write_text(json.dumps({"2": entry, "3": other}))
    exported, info = export_student(checkpoint, 0.999, tmp_path / "student.safetensors")
    assert list(read_export_info(exported)["schedules"]) == ["2"]
    a = sample(capsys, ["--checkpoint", str(checkpoint)], tmp_path / "a.npz", "--num", "4", "--schedule", "best")
    b = sample(capsys, ["--export", str(exported)], tmp_path / "b.npz", "--num", "4", "--schedule", "best")
    assert np.array_equal(a["images"], b["images"])
    assert sample_main(["--export", str(exported), "--out", str(tmp_path / "c.npz"), "--schedule", "best",
                        "--nfe", "3"]) == 2
    assert "carries searched schedules for NFE [2], not 3" in one_error_line(capsys)
