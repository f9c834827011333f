"""benchmarks/heun_throughput.py: what it times is the teacher's full Heun trajectory on the batches asked for."""

import torch

from benchmarks.heun_throughput import main
from ctm.schedule import karras_grid
from ctm.solver import heun_trajectory


def test_heun_benchmark_times_the_full_trajectory_at_each_batch(capsys):
    result = main(["--batch", "1", "3", "--repeats", "1", "--N", "4"])
    assert list(result["runs"]) == [1, 3]
    out = capsys.readouterr().out
    assert "batch    1" in out and "batch    3" in out
    teacher = result["teachers"]["fp32 eager"]
    for batch, run in result["runs"].items():
        assert run["rates"]["fp32 eager"] > 0 and run["x"].shape == (batch, 3, 16, 16)
        assert run["x"].std() > 20  # drawn at σ_max = 80
        expected = heun_trajectory(teacher.denoise, run["x"], karras_grid(4))[-1]
        torch.testing.assert_close(run["x_end"]["fp32 eager"], expected, rtol=1e-5, atol=1e-5)


def test_heun_benchmark_on_the_mixture_lands_near_its_exact_flow_map():
    """18-point Heun from σ_max to σ_min against the mixture's exact ODE solution (Heun's error here is ≈ 0.09)."""
    result = main(["--net", "digits-gmm", "--batch", "2", "--repeats", "1"])
    teacher, run = result["teachers"]["gmm (exact)"], result["runs"][2]
    exact = teacher.flow_map(run["x"].double(), 80.0, 0.002).float()
    assert (run["x_end"]["gmm (exact)"] - exact).abs().max() < 0.2
