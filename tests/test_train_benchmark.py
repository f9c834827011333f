"""benchmarks/train_speed.py at step level (the GPU script runs the same code with bigger nets): cached and online
mode are one computation (same draws, same loss) before they are timed."""

import pytest

from benchmarks.train_speed import main


@pytest.mark.parametrize("net", ["tiny-edm", "digits-gmm"])
def test_step_level_benchmark_checks_cached_equals_online_then_times_both(net, capsys):
    result = main(["--level", "step", "--net", net, "--batch", "4", "--steps", "1", "--warmup", "1"])
    check, rates = result["check"], result["rates"]
    assert check["same_draws"]
    assert check["x_u_diff"] < 1e-4  # two Heun solvers (the cache writer's and the step's): equal up to rounding
    assert check["loss_online"] > 0 and check["loss_diff"] < 1e-4
    assert set(rates) == {"online", "cached"} and all(r > 0 for r in rates.values())
    out = capsys.readouterr().out
    assert "same draws in both modes (x_t, t, u, s, x0, DSM σ, noise): yes" in out and "cached / online" in out
