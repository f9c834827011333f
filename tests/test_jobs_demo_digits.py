import json

from jobs.demo_digits import main


def test_demo_runs_end_to_end_and_learns(tmp_path):
    main(["--out", str(tmp_path), "--steps", "60", "--gan-start", "40", "--batch", "32", "--eval-samples", "64",
          "--components", "3"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["flow_map_mse_after"] < metrics["flow_map_mse_before"]
    for name in ("samples_nfe1.png", "samples_nfe2.png", "teacher_heun.png", "teacher.npz"):
        assert (tmp_path / name).stat().st_size > 0
