from benchmarks.heun_throughput import main


def test_heun_benchmark_runs_on_cpu(capsys):
    main(["--batch", "2", "--repeats", "1", "--N", "4"])
    out = capsys.readouterr().out
    assert "batch    2" in out and "img/s" in out
