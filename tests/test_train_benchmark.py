"""Smoke test of benchmarks/train_speed.py at step level (the GPU script runs the same code with bigger nets)."""

from benchmarks.train_speed import main


def test_step_level_benchmark_times_both_modes(capsys):
    rates = main(["--level", "step", "--net", "tiny-edm", "--batch", "4", "--steps", "1", "--warmup", "1"])
    assert set(rates) == {"online", "cached"} and all(r > 0 for r in rates.values())
    assert "cached / online" in capsys.readouterr().out
