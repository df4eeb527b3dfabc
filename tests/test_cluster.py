"""Cluster connection: dead addresses fail fast, `auto` falls back, `local` starts a head."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from ermgap_ray.cluster import ClusterError, connect, probe, split_address


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_ray():
    if ray.is_initialized():
        ray.shutdown()
    yield
    ray.shutdown()


def test_split_address() -> None:
    assert split_address("10.0.0.5:6380") == ("10.0.0.5", 6380)
    assert split_address("ray://head:10001") == ("head", 10001)
    assert split_address("head") == ("head", 6379)
    with pytest.raises(ClusterError, match="port"):
        split_address("head:abc")


def test_dead_address_fails_fast_with_a_clear_message(monkeypatch) -> None:
    dead = f"127.0.0.1:{_dead_port()}"
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=f"no Ray cluster reachable at {dead}"):
        connect(dead)
    monkeypatch.setenv("RAY_ADDRESS", dead)
    with pytest.raises(ClusterError, match="RAY_ADDRESS"):
        connect("auto")
    assert time.monotonic() - t0 < 10
    assert not ray.is_initialized()
    t0 = time.monotonic()
    with pytest.raises(ClusterError):
        probe("192.0.2.123:6379", timeout=1.0)  # TEST-NET-1: unroutable, must time out
    assert time.monotonic() - t0 < 5


def test_auto_falls_back_to_starting_a_local_cluster(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    info = connect("auto", num_cpus=1, dashboard=False)
    assert info.started and info.num_cpus == 1 and info.num_nodes == 1
    assert "started a local Ray head" in info.describe()
    assert connect("auto").address == info.address, "an initialised Ray is reused"


def test_local_starts_a_head_with_dashboard_and_train_env(monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_dead_port()}")
    info = connect("local", num_cpus=2)
    assert info.started and info.num_cpus == 2
    assert info.dashboard_url and info.dashboard_url.startswith("127.0.0.1:")
    assert "2 CPU" in info.describe() and "dashboard http://127.0.0.1:" in info.describe()

    @ray.remote(num_cpus=0)
    def worker_env() -> tuple[str | None, str | None]:
        return (
            os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"),
            os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH"),
        )

    assert ray.get(worker_env.remote()) == ("0.2", "0")


_JOIN_IN_TOKEN_MODE = """
import os
from ray.cluster_utils import Cluster
from ermgap_ray.cluster import ClusterError, connect
os.environ["RAY_AUTH_MODE"] = "disabled"
nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
os.environ["RAY_AUTH_MODE"] = "token"
try:
    connect(nodes.address)
    print("JOINED")
except ClusterError as err:
    print("CLUSTERERROR", err)
nodes.shutdown()
"""


@pytest.mark.parametrize("token", ["0123456789abcdef0123456789abcdef", None], ids=["token", "none"])
def test_auth_mode_mismatch_is_a_clear_error(token: str | None, tmp_path: Path) -> None:
    """A token-mode driver joining a no-auth cluster: with a token it connects but its actors
    never start; with none Ray would abort the process. Both must end in one ClusterError.

    In a subprocess with its own HOME (no ~/.ray/auth_token): Ray caches the auth mode
    process-wide, which would leak into later tests.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    }
    env["HOME"] = str(tmp_path)
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, "-c", _JOIN_IN_TOKEN_MODE],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert "CLUSTERERROR" in done.stdout, done.stdout + done.stderr[-2000:]
    expected = "RAY_AUTH_MODE is token here" if token else "no Ray token was found"
    assert expected in done.stdout
