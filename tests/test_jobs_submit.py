"""generate → train → evaluate submitted with the Ray Jobs SDK to a real head node started by `ray start`."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(env, log):
    """(Popen of `ray start --head --block` in its own process group, its dashboard address), or an AssertionError
    with the head's own output if it exits before its dashboard and job agent listen."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    dashboard, agent = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths live below it (107-byte limit)
    # Every port chosen here: the defaults of the agent's HTTP server (52365) and the client server (10001) are
    # fixed, and a cluster still stopping on this machine holds them; the agent then runs without HTTP and
    # submit_job waits for it forever.
    start = [ray, "start", "--head", "--block", "--num-cpus=8", "--num-gpus=0", f"--port={free_port()}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
             f"--ray-client-server-port={free_port()}", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    with open(log, "ab") as out:
        head = subprocess.Popen(start, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    head.temp_dir = temp_dir
    deadline = time.time() + 120
    while not (listening(dashboard) and listening(agent)):  # the job head forwards every submission to the agent
        if head.poll() is not None or time.time() > deadline:
            stop_head(head)
            raise AssertionError(f"the head node did not start (exit {head.returncode}):\n"
                                 + Path(log).read_text()[-3000:])
        time.sleep(1)
    return head, f"http://127.0.0.1:{dashboard}"


def stop_head(head):
    """Signal the head's process group only: nothing of it outlives the test."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:  # the whole group has already exited
            pass
        try:
            head.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture
def head_node(tmp_path, monkeypatch):
    """`ray start --head --block`, stopped by signalling its process group only (a global `ray stop` would also stop
    the test session's own cluster). A port picked free can be taken before the head binds it (the head then exits
    at once): one more try with fresh ports."""
    import ray as ray_module
    ray_module.shutdown()  # the session's shared cluster, if a test started it: one cluster on the machine at a time
    for key in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT"):  # they named that cluster (jobs.common.start_local_ray)
        monkeypatch.delenv(key, raising=False)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        head, address = start_head(env, tmp_path / "head.log")
    except AssertionError as first:
        print(first)
        head, address = start_head(env, tmp_path / "head.log")
    try:
        yield address
    finally:
        stop_head(head)


def submit_and_wait(client, entrypoint, timeout=600):
    from ray.job_submission import JobStatus
    runtime_env = {"working_dir": str(ROOT), "excludes": [".venv", "runs", ".git", "tests/fixtures"],
                   "env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}}
    deadline = time.time() + timeout
    while True:
        try:
            job = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as e:  # the head's job agent can lag its dashboard by seconds
            assert "No available agent" in str(e) and time.time() < deadline, e
            time.sleep(2)
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, f"{entrypoint} did not finish:\n{client.get_job_logs(job)[-3000:]}"
        time.sleep(2)
    logs = client.get_job_logs(job)
    return status, logs


@pytest.mark.own_ray_cluster
def test_generate_train_evaluate_as_submitted_jobs(head_node, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    from ray.job_submission import JobStatus, JobSubmissionClient
    client = JobSubmissionClient(head_node)
    sets = "--config jobs/configs/digits.yaml " + " ".join(f"--set {kv}" for kv in [
        f"cache.root={tmp_path / 'cache'}", "cache.num_records=192", "cache.records_per_shard=96",
        "cache.num_actors=1", f"train.storage_path={tmp_path / 'train'}", "train.steps=12", "train.batch_size=16",
        "train.checkpoint_every=6", "train.gan_start=8", "train.log_every=4", f"eval.out={tmp_path / 'eval'}",
        "eval.num_samples=200", "eval.nfe=[1,2]", "eval.gammas=[0.0]"])

    status, logs = submit_and_wait(client, f"{sys.executable} -m jobs.generate_trajectories {sets}")
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    manifests = list((tmp_path / "cache").glob("*/manifest.json"))
    assert len(manifests) == 1 and "cache:" in logs

    status, logs = submit_and_wait(client, f"{sys.executable} -m jobs.train {sets}")
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    checkpoints = sorted((tmp_path / "train").glob("*/checkpoint*/checkpoint.pt"))
    assert checkpoints, logs[-3000:]
    newest = max(checkpoints, key=lambda p: p.stat().st_mtime).parent

    status, logs = submit_and_wait(client, f"{sys.executable} -m jobs.evaluate {sets} --checkpoint {newest}")
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {r["setting"]["nfe"] for r in results["results"]} == {1, 2}
    assert (tmp_path / "eval" / "report.md").exists() and "report:" in logs

    status, logs = submit_and_wait(client, f"{sys.executable} -m jobs.train {sets} --set train.batch_size=15 "
                                           "--set train.num_workers=2")
    assert status == JobStatus.FAILED and "train.batch_size" in logs  # a clear error, non-zero exit


@pytest.mark.own_ray_cluster
def test_a_stage_on_its_own_cluster_runs_beside_another_cluster(head_node, tmp_path):
    """With a `ray start` head up on the machine, `--local-cpus` starts a private cluster that every process of it
    (Train's controller and placement-group cleaner too) addresses explicitly: the run succeeds, and nothing
    searches the machine for "the" cluster."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    sets = [f"cache.root={tmp_path / 'cache'}", "cache.num_records=32", "cache.records_per_shard=32",
            f"train.storage_path={tmp_path / 'train'}", "train.steps=2", "train.batch_size=8",
            "train.checkpoint_every=2", "student.init_steps=10", "train.distance=l2"]
    for stage in ("jobs.generate_trajectories", "jobs.train"):
        run = subprocess.run([sys.executable, "-m", stage, "--config", "jobs/configs/digits.yaml", "--local-cpus", "8",
                              *[a for kv in sets for a in ("--set", kv)]], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
        out = run.stdout + run.stderr
        assert run.returncode == 0, out[-3000:]
        assert "multiple active Ray instances" not in out, out[-3000:]
    assert list((tmp_path / "train" / "digits").glob("checkpoint_*/checkpoint.pt"))
