"""Session-wide test environment: a private cache, quiet local Ray, one small synthetic corpus."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# Set before anything imports Ray or builds a backbone, so workers inherit it and tests never
# touch (or depend on) the user's ~/.cache/ermgap_ray.
os.environ.setdefault("ERMGAP_CACHE", tempfile.mkdtemp(prefix="ermgap-test-cache-"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~150-clip synthetic twin, generated once per session; tests must not modify it."""
    from ermgap_ray.data.synthetic import make_corpus

    return make_corpus(tmp_path_factory.mktemp("synthetic-small"), seed=0, size="small")


class TrainWorkerKiller(threading.Thread):
    """SIGKILLs the process running a trial's loop once `root.glob(pattern)` finds a file (a
    written checkpoint), so the kill lands mid-trial; `killed` holds the pid it killed.

    Under the train executor that is the first Ray Train worker; under the tune executor it is
    the Tune trainable whose trial folder holds the checkpoint (its pid is in result.json).
    """

    def __init__(self, root: Path, pattern: str) -> None:
        super().__init__(daemon=True)
        self.root, self.pattern = root, pattern
        self.killed: list[int] = []

    def run(self) -> None:
        import json

        import psutil

        deadline = time.time() + 300
        found: list[Path] = []
        while time.time() < deadline and not found:
            found = list(self.root.glob(self.pattern))
            time.sleep(0.2)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any("RayTrainWorker" in part for part in proc.info["cmdline"] or []):
                proc.kill()
                self.killed.append(proc.info["pid"])
                return
        if found:  # no Train worker: the loop runs in the trial's own Tune trainable
            result_json = found[0].parents[1] / "result.json"
            lines: list[str] = []
            while time.time() < deadline and not lines:  # the result lands after its checkpoint
                lines = result_json.read_text().splitlines() if result_json.is_file() else []
                time.sleep(0.1)
            pid = json.loads(lines[-1])["pid"]
            psutil.Process(pid).kill()
            self.killed.append(pid)


@pytest.fixture
def train_worker_killer() -> type[TrainWorkerKiller]:
    return TrainWorkerKiller


def sigkill_driver_mid_sweep(
    script: str, run_dir: Path, finished: int = 2, env: dict | None = None, timeout: float = 120
) -> None:
    """Run a sweep driver (`python -c script`) and SIGKILL it once `finished` trials of
    RUN_DIR/trials.parquet are TERMINATED: a driver dying mid-sweep, for `--resume` tests."""
    import signal
    import subprocess
    import sys

    from ermgap_ray.results import read_trials

    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            df = read_trials(run_dir)
            if df[df.status == "TERMINATED"].trial_id.nunique() >= finished:
                return
            time.sleep(0.5)
        raise AssertionError(f"fewer than {finished} trials finished within {timeout:g} s")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def kill_driver_mid_sweep() -> Callable[..., None]:
    return sigkill_driver_mid_sweep


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for process groups, dashboards and a
    dead `--cluster` address)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_processes() -> set[int]:
    import psutil

    names = ("raylet", "gcs_server", "ray::", "dashboard", "log_monitor")
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if any(n in cmd for n in names):
            found.add(proc.info["pid"])
    return found


@pytest.fixture
def ray_processes() -> Callable[[], set[int]]:
    """PIDs of every Ray process on this machine, for orphan checks after a driver stops."""
    return _ray_processes
