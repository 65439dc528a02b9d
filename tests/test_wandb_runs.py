"""W&B with an API key and no server logs offline at once; Ctrl-C reads as interrupted (exit 130,
W&B preempted); a resumed run's W&B history continues its steps. Read back with the real client.
"""

from __future__ import annotations

import http.server
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TINY, clean_env, read_metrics, read_summary, wait_for_rows
from trpo_lab.logging import connection_problem, wandb_server
from trpo_lab.train import exit_code

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, like a real one


def closed_port() -> int:
    """A local TCP port nothing listens on: a W&B server that cannot be reached, anywhere."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_app(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen, float]:
    """Run ``python -m trpo_lab`` to the end; returns the finished process and its wall time.
    W&B's mode is left to the app (no WANDB_MODE), unlike tests.conftest.run_cli."""
    full_env = {k: v for k, v in clean_env({"PYTHONUNBUFFERED": "1", **env}).items()
                if k != "WANDB_MODE"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "trpo_lab", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    return proc, time.perf_counter() - start


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def wandb_file_records(run: Path) -> list[dict]:
    import json

    wandb_file = next(run.glob("run-*.wandb"))
    out = subprocess.run(["wandb", "leet", "inspect", "--json", str(wandb_file)],
                         capture_output=True, text=True, timeout=120, check=True,
                         stdin=subprocess.DEVNULL)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def history_steps(run: Path) -> list[tuple[int, int]]:
    """``(_step, iteration)`` of every history row of one offline W&B run."""
    rows = [r["history"]["item"] for r in wandb_file_records(run) if r["type"] == "history"]
    return [(int(row["_step"]), int(row["iteration"])) for row in rows]


@pytest.fixture(scope="module")
def offline_baseline(tmp_path_factory) -> float:
    """Wall time of a tiny run logging offline with no API key: W&B's own cost included."""
    tmp = tmp_path_factory.mktemp("baseline")
    proc, wall = run_app([*TINY, f"hydra.run.dir={tmp / 'run'}"], tmp, {})
    assert proc.returncode == 0, proc.stderr
    return wall


@pytest.mark.parametrize("mode", ["auto", "online"])
def test_api_key_without_a_reachable_server_logs_offline_at_once(mode, offline_baseline,
                                                                  tmp_path):
    run_dir = tmp_path / "run"
    server = f"http://127.0.0.1:{closed_port()}"
    proc, wall = run_app([*TINY, f"logger.mode={mode}", f"hydra.run.dir={run_dir}"], tmp_path,
                         {"WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": server})
    assert proc.returncode == 0, proc.stderr
    # no wait for W&B's own 60 s init timeout: about as fast as a run offline from the start.
    # (The margin absorbs a loaded test machine; the cost over logger=none on a quiet machine
    # is measured by benchmarks/bench_wandb_fallback.py.)
    assert wall < offline_baseline + 15.0, (wall, offline_baseline)
    summary = read_summary(run_dir)
    assert summary["wandb_mode"] == "offline"
    reason = f"cannot reach 127.0.0.1:{server.rsplit(':')[-1]} (ConnectionRefusedError"
    assert summary["wandb_fallback"].startswith(reason)
    (offline,) = offline_runs(run_dir)
    # one plain line, no warning or traceback: what happened and how to upload the run later
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"trpo-lab: W&B: {summary['wandb_fallback']}, so logging offline to {offline}; "
        f"upload later with: wandb sync {offline}"]
    assert not list((run_dir / "wandb").glob("run-*"))  # no empty online run directory
    assert history_steps(offline) == [(0, 0), (1, 1)]


class Refusing(http.server.BaseHTTPRequestHandler):
    """A W&B server that answers every request with 401 (a wrong API key)."""

    def _refuse(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"errors":[{"message":"invalid api key"}]}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_online_init_refused_by_the_server_falls_back_offline(refusing_server, tmp_path):
    run_dir = tmp_path / "run"
    proc, _ = run_app([*TINY, "logger.mode=online", f"hydra.run.dir={run_dir}"], tmp_path,
                      {"WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": refusing_server})
    assert proc.returncode == 0, proc.stderr
    summary = read_summary(run_dir)
    assert summary["wandb_mode"] == "offline"
    assert summary["wandb_fallback"].startswith("online init failed (")
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert line.startswith("trpo-lab: W&B: online init failed (") and "wandb sync " in line
    assert not list((run_dir / "wandb").glob("run-*"))  # the failed attempt's directory went
    (offline,) = offline_runs(run_dir)
    assert history_steps(offline) == [(0, 0), (1, 1)]


def test_ctrl_c_exits_130_reads_preempted_in_wandb_and_resumes_its_history(tmp_path):
    run_dir = tmp_path / "run"
    args = ["total_steps=8192", "batch_steps=512", "checkpoint.every=1", "eval.episodes=2",
            "critic.epochs=1", f"hydra.run.dir={run_dir}"]
    env = clean_env({"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "trpo_lab", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    wait_for_rows(run_dir, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted"
    done = summary["iterations"]
    assert 2 <= done < 16 and len(read_metrics(run_dir)) == done
    assert f"interrupted after {done} updates" in out and f"results in {run_dir}" in out
    (first,) = offline_runs(run_dir)
    records = wandb_file_records(first)
    exits = [r["exit"] for r in records if r["type"] == "exit"]
    assert [e["exit_code"] for e in exits] == [130]
    assert any(r["type"] == "preempting" for r in records)  # W&B: preempted, not failed
    status = [r["summary"]["update"]["status"] for r in records
              if r["type"] == "summary" and "status" in r["summary"]["update"]]
    assert status == ["interrupted"]
    assert history_steps(first) == [(k, k) for k in range(done)]

    time.sleep(1.0)  # a new second: W&B names the resumed offline run by its start time
    resumed = subprocess.run([sys.executable, "-m", "trpo_lab", *args], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300,
                             stdin=subprocess.DEVNULL)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from iteration {done} ({done} of 16 updates done)" in resumed.stdout
    second = [run for run in offline_runs(run_dir) if run != first]
    assert len(second) == 1
    # the resumed run's history continues at the checkpoint's update, W&B step = iteration
    assert history_steps(second[0]) == [(k, k) for k in range(done, 16)]
    assert [e["exit_code"] for e in (r["exit"] for r in wandb_file_records(second[0])
                                     if r["type"] == "exit")] == [0]


def test_exit_codes_follow_the_shell_convention():
    assert exit_code("completed") == 0 and exit_code("failed") == 1
    assert exit_code("interrupted", signal.SIGINT) == 130
    assert exit_code("interrupted", signal.SIGTERM) == 143
    assert exit_code("interrupted") == 130  # a KeyboardInterrupt, no signal known


def test_wandb_server_is_the_proxy_when_one_is_set():
    assert wandb_server("https://api.wandb.ai", {}) == ("api.wandb.ai", 443)
    assert wandb_server("http://wandb.lab:8080", {}) == ("wandb.lab", 8080)
    assert wandb_server("https://api.wandb.ai", {"HTTPS_PROXY": "http://proxy.lab:3128"}) == (
        "proxy.lab", 3128)
    assert wandb_server("https://api.wandb.ai", {"https_proxy": "proxy.lab:8000"}) == (
        "proxy.lab", 8000)
    assert wandb_server("http://wandb.lab", {"https_proxy": "proxy.lab:8000"}) == (
        "wandb.lab", 80)  # an http server: the https proxy is not used


def test_connection_problem_is_none_for_a_listening_port_and_says_why_otherwise():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert connection_problem("127.0.0.1", listening.getsockname()[1], 1.0) is None
    problem = connection_problem("127.0.0.1", closed_port(), 1.0)
    assert problem is not None and problem.startswith("ConnectionRefusedError")
