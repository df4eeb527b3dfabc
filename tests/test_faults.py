"""Faults in flight: a full disk while checkpointing, Ctrl-C, and names that escape the run dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from ermgap_ray.config import ConfigError, TrialConfig, safe_run_name
from ermgap_ray.train import CheckpointWriteError, LocalSession, run_local

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 64 KiB filesystem: big enough for the trainer state, too small for a checkpoint."""
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_gives_a_clear_error_and_no_half_checkpoint(small_corpus, small_tmpfs):
    cfg = TrialConfig(data=str(small_corpus), epochs=1, batch_size=8, bootstrap=20)
    with pytest.raises(CheckpointWriteError, match=r"epoch 1 .*No space left on device"):
        run_local(cfg, small_tmpfs / "run", verbose=False)
    session = LocalSession(small_tmpfs / "run", keep=2, resume=True)
    assert session.latest_checkpoint() is None
    leftovers = list((small_tmpfs / "run" / "checkpoints").glob("*"))
    assert leftovers == [], leftovers


@pytest.mark.parametrize("name", ["../escape", "/etc", "a/b", "", ".hidden", "x" * 201])
def test_run_names_cannot_escape_the_storage_dir(name):
    with pytest.raises(ConfigError, match="run name"):
        safe_run_name(name)


def test_train_cli_refuses_an_escaping_name(small_corpus, tmp_path, capsys):
    from ermgap_ray.train.cli import main

    code = main(["--storage", str(tmp_path), "--name", "../out", "--set", f"data={small_corpus}"])
    assert code == 2 and "run name" in capsys.readouterr().err
    assert not (tmp_path.parent / "out").exists()


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_cleanly_without_orphans(tmp_path, ray_processes):
    before = ray_processes()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "sweeps/ablation.py", "--preset", "smoke", "--cluster", "local"]
    cmd += ["--storage", str(tmp_path), "--name", "sigint", "--set", "epochs=3"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any("RUNNING" in line for line in list(lines)):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before a trial ran:\n" + "".join(lines)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 130, out[-3000:]
    assert "--resume" in out
    time.sleep(3)
    orphans = [
        p for p in ray_processes() - before if psutil.pid_exists(p) and _alive(psutil.Process(p))
    ]
    assert not orphans, [" ".join(psutil.Process(p).cmdline()) for p in orphans]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
