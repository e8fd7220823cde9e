"""`faceflow serve` against a real `prefect server start`: a scheduled continue-training run is created and runs."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.flows.project import set_params

SCHEDULE_WAIT_SECONDS = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"prefect server exited early:\n{process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"prefect server at {url} not healthy after {timeout} s")


@pytest.fixture()
def prefect_server(pipeline_project, tmp_path):
    port = free_port()
    env = dict(pipeline_project.env, PREFECT_HOME=str(tmp_path / "server-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5")
    process = subprocess.Popen(
        [f"{pipeline_project.env['PATH'].split(':')[0]}/prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def flow_runs(api_url: str, deployment_name: str) -> list[dict]:
    request = urllib.request.Request(
        f"{api_url}/flow_runs/filter",
        data=json.dumps({"deployments": {"name": {"any_": [deployment_name]}}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_scheduled_continue_training_run_is_created_and_runs(pipeline_project, prefect_server):
    root = pipeline_project.root
    set_params(root, {("serve", "cron"): "* * * * *", ("serve", "continue_iterations"): 10})
    pipeline_project.commit("Serve every minute for the test")
    before = json.loads((root / "metrics" / "train" / "sharpen.json").read_text())["iterations"]
    env = dict(pipeline_project.env, PREFECT_API_URL=prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="3")
    serve = subprocess.Popen(["faceflow", "serve"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + SCHEDULE_WAIT_SECONDS
        states: list[str] = []
        while time.monotonic() < deadline:
            runs = flow_runs(prefect_server, "continue-training")
            states = [run["state_type"] for run in runs]
            if "COMPLETED" in states or "FAILED" in states or "CRASHED" in states:
                break
            assert serve.poll() is None, f"faceflow serve exited:\n{serve.stdout.read()}"
            time.sleep(3)
        assert runs, "the schedule created no flow run"
        assert "COMPLETED" in states, f"no scheduled run completed (states {states})"
        assert any(run["auto_scheduled"] for run in runs if run["state_type"] == "COMPLETED")
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
    after = json.loads((root / "metrics" / "train" / "sharpen.json").read_text())["iterations"]
    assert after == before + 10, "the last stage continued from where it stopped"
    log = pipeline_project.run("git", "log", "-1", "--format=%s").stdout.strip()
    assert log.startswith("Continue training sharpen: iterations"), log
    assert pipeline_project.run("dvc", "status", "--json").stdout.strip() == "{}"
