"""Connect the sweep driver to a Ray cluster: `auto`, `local` or `HOST:PORT`.

RAY_NOTES.md drives every choice here: a dead `RAY_ADDRESS` makes `ray.init` hang for minutes
(so the port is probed first), the State API must be up or stopped trials leak placement groups
(so local heads start the dashboard, bound to 127.0.0.1), and Train's controller polls reports
every `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S` (2 s by default, which doubles a short fit's wall).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import ray

from ermgap_ray.errors import ClusterError

PROBE_TIMEOUT_S = 3.0
DEFAULT_RAY_PORT = 6379

RAY_ENV: dict[str, str] = {
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
}
# Only for a head this process starts: one machine is never drained, so Train's preemption
# watcher (one extra actor process per trial, ~1.3 CPU-s) has nothing to watch. On a joined
# cluster (spot nodes, autoscaling) Ray's default stays.
LOCAL_HEAD_ENV: dict[str, str] = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@dataclass
class ClusterInfo:
    """What the driver is connected to; `describe()` is the line the CLI prints."""

    address: str
    started: bool
    num_cpus: float
    num_gpus: float
    num_nodes: int
    dashboard_url: str | None

    def describe(self) -> str:
        how = "started a local Ray head" if self.started else f"connected to {self.address}"
        dash = f", dashboard http://{self.dashboard_url}" if self.dashboard_url else ""
        return (
            f"cluster: {how} ({self.num_nodes} node(s), {self.num_cpus:g} CPU, "
            f"{self.num_gpus:g} GPU{dash})"
        )


def split_address(address: str) -> tuple[str, int]:
    """`host:port`, `ray://host:port` or a bare host (Ray's default GCS port 6379)."""
    bare = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not sep:
        return bare, DEFAULT_RAY_PORT
    try:
        return host, int(port)
    except ValueError:
        raise ClusterError(f"cluster address {address!r}: port must be an integer") from None


def explicit_address(cluster: str) -> str | None:
    """The address that `cluster` names: itself, or RAY_ADDRESS for `auto`; None for a local
    head (`local`, or `auto` with no RAY_ADDRESS), which is found or started instead."""
    if cluster not in ("auto", "local"):
        return cluster
    env_address = os.environ.get("RAY_ADDRESS", "") if cluster == "auto" else ""
    return env_address if env_address not in ("", "auto", "local") else None


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in seconds, not minutes, when nothing listens at `address`."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as err:
        raise ClusterError(
            f"no Ray cluster reachable at {address} ({err.__class__.__name__}: {err}); start one "
            "with `ray start --head`, fix --cluster / RAY_ADDRESS, or use --cluster local"
        ) from None


def _local_head_address() -> str | None:
    """The head `ray start --head` on this machine recorded, if it is still alive.

    Only that record counts: other processes' private `ray.init()` clusters are not joined.
    """
    from ray._private import services

    try:
        address = services.find_bootstrap_address(None)
    except Exception:
        return None
    if not address:
        return None
    try:
        probe(address, timeout=1.0)
    except ClusterError:
        return None
    return address


def _prepare_env(defaults: dict[str, str]) -> None:
    """Set the Ray env knobs before `ray.init` so the raylet and every worker inherit them.

    RAY_AUTH_MODE is left to the user: Ray 2.60 starts local heads with token auth, and a
    joining driver must match the cluster's mode (RAY_NOTES.md), which only the user knows;
    a mismatch is turned into a ClusterError that says what to set.
    """
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _init(env_keys: tuple[str, ...], **kwargs: object) -> str | None:
    env_vars = {k: os.environ[k] for k in env_keys}
    try:
        context = ray.init(
            runtime_env={"env_vars": env_vars},
            logging_level=logging.WARNING,
            configure_logging=True,
            **kwargs,
        )
    except ConnectionError:
        raise
    except Exception as err:
        if "auth" in str(err).lower() or err.__class__.__name__ == "AuthenticationError":
            raise ClusterError(
                f"cluster refused the connection ({err.__class__.__name__}): set "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the cluster's "
                "token (`ray get-auth-token` on the head)"
            ) from None
        raise ClusterError(f"ray.init failed: {err.__class__.__name__}: {err}") from None
    return getattr(context, "dashboard_url", None) or None


def _start_local(num_cpus: int | None, dashboard: bool, log_to_driver: bool) -> str | None:
    env = RAY_ENV | LOCAL_HEAD_ENV
    _prepare_env(env)
    return _init(
        tuple(env),
        address="local",
        num_cpus=num_cpus if num_cpus is not None else os.cpu_count(),
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        log_to_driver=log_to_driver,
    )


@ray.remote(num_cpus=0)
class _Ping:
    def pid(self) -> int:
        return os.getpid()


def _require_token_if_token_mode() -> None:
    """Ray 2.60 aborts the whole process (a C++ check, no exception) when a token-mode driver
    joins a cluster and finds no token, so the driver looks for one first."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return
    from ray._raylet import AuthenticationTokenLoader

    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        raise ClusterError(
            "RAY_AUTH_MODE is token here but no Ray token was found: set RAY_AUTH_TOKEN, or "
            "RAY_AUTH_TOKEN_PATH, or write ~/.ray/auth_token (`ray get-auth-token` on the head); "
            "for a cluster without auth set RAY_AUTH_MODE=disabled"
        )


def _join(address: str, log_to_driver: bool) -> str | None:
    probe(address)
    _require_token_if_token_mode()
    _prepare_env(RAY_ENV)
    try:
        return _init(tuple(RAY_ENV), address=address, log_to_driver=log_to_driver)
    except ConnectionError as err:
        raise ClusterError(f"could not join the Ray cluster at {address}: {err}") from None


def _check_runs_actors(where: str) -> None:
    """Run one zero-CPU actor: a driver whose auth mode does not match the cluster's connects
    without error, but its actors (Tune trials) are cancelled before they start."""
    try:
        actor = _Ping.remote()
        ray.get(actor.pid.remote(), timeout=60)
        ray.kill(actor)
    except Exception as err:
        ray.shutdown()
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        raise ClusterError(
            f"{where} runs no actors for this driver ({err.__class__.__name__}); RAY_AUTH_MODE "
            f"is {mode} here: it must match the cluster's (token or disabled)"
        ) from None


def _info(started: bool, dashboard: str | None = None) -> ClusterInfo:
    ctx = ray.get_runtime_context()
    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return ClusterInfo(
        address=ctx.gcs_address,
        started=started,
        num_cpus=float(resources.get("CPU", 0.0)),
        num_gpus=float(resources.get("GPU", 0.0)),
        num_nodes=len(nodes),
        dashboard_url=dashboard,
    )


def connect(
    cluster: str = "auto",
    num_cpus: int | None = None,
    dashboard: bool = True,
    log_to_driver: bool = False,
) -> ClusterInfo:
    """Connect per DESIGN.md: `auto` = RAY_ADDRESS, else a live local head, else start one.

    `local` always starts a head on this machine with all its cores (or `num_cpus`); any other
    value is an address. An already-initialised Ray in this process is reused as is.
    """
    if ray.is_initialized():
        return _info(started=False)
    env_address = os.environ.get("RAY_ADDRESS") if cluster == "auto" else None
    address = explicit_address(cluster)
    if cluster == "local" or env_address == "local":
        started = True
    elif address is not None:
        started = False
    else:
        address = _local_head_address()
        started = address is None
    if started:
        # A head started by this process shares its auth mode, so its actors always run.
        dashboard_url = _start_local(num_cpus, dashboard, log_to_driver)
    else:
        dashboard_url = _join(address, log_to_driver)
        _check_runs_actors(f"the cluster at {address}")
    return _info(started, dashboard_url)
