"""What a cluster scheduler and a second user do to a driver: concurrent drivers, SIGTERM,
bad storage, a changed `--resume`, and the CLIs' help."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ermgap_ray.errors import ConfigError
from ermgap_ray.results import read_manifest, read_trials, write_manifest
from ermgap_ray.sweep import (
    LOCK_FILE,
    SweepConfig,
    load_sweep_config,
    resume_config,
    run_dir_lock,
)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
LOCKED = "is in use by another driver (pid "
SWEEP_FIELDS = {f.name: f for f in dataclasses.fields(SweepConfig)}


def _ablation_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation_cli", REPO / "sweeps" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sweep_main():
    """`main` of sweeps/ablation.py, which is a script, not a module of the package."""
    return _ablation_module().main


@functools.cache
def _presets() -> dict[str, SweepConfig]:
    return {p.stem: load_sweep_config(p.stem) for p in sorted((REPO / "sweeps").glob("*.yaml"))}


def _preset_note(knob: str) -> str:
    """What a flag's "(preset: …)" says about `knob`: one value if every preset that reads it
    agrees, else each such preset's value. A knob whose help starts "Grid:" or "Search:" is
    read only by presets that run that phase."""
    prefix = SWEEP_FIELDS[knob].metadata["help"].split(":")[0].lower()
    values = {}
    for name, cfg in _presets().items():
        if prefix not in ("grid", "search") or cfg.kind in (prefix, "both"):
            value = getattr(cfg, knob)
            if isinstance(value, list):
                value = " ".join(value)
            values[name] = f"{value:g}" if isinstance(value, float) else str(value)
    if len(set(values.values())) == 1:
        return f"preset: {next(iter(values.values()))})"
    return "preset: " + ", ".join(f"{name} {v}" for name, v in values.items()) + ")"


def test_help_quotes_the_presets_as_they_are() -> None:
    """The "(preset: …)" notes restate sweeps/*.yaml, since --help loads no preset (it imports
    none of pandas, numpy, torch or Ray); this keeps them from going stale, as "paper 5" did."""
    helps = {a.dest: " ".join((a.help or "").split()) for a in _ablation_module().parser()._actions}
    for knob in (
        "cluster",
        "storage",
        "workers_per_trial",
        "gpus_per_worker",
        "executor",
        "num_samples",
        "sampler",
        "seeds",
    ):
        assert _preset_note(knob) in helps[knob], (knob, helps[knob], _preset_note(knob))
    assert _preset_note("objectives") in helps["objective"]
    assert "preset: none)" in helps["constraint"] and "preset: none)" in helps["tracker"]
    assert not any(cfg.constraints for cfg in _presets().values())
    assert not any(cfg.trackers for cfg in _presets().values())


def _driver(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "sweeps/ablation.py", *args]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_second_driver_is_refused_race(tmp_path: Path, free_port: int) -> None:
    """Two drivers 100 ms apart, 5 times: exactly one gets past the lock, the other exits 2
    naming the run dir and the holder. The first then fails on the dead cluster address (its
    own one-line error), so no Ray starts."""
    for i in range(5):
        args = ["--preset", "smoke", "--storage", str(tmp_path), "--name", f"race{i}"]
        args += ["--cluster", f"127.0.0.1:{free_port}"]
        first = _driver(*args)
        time.sleep(0.1)
        second = _driver(*args)
        outs = [p.communicate(timeout=120)[0] for p in (first, second)]
        refused = [o for o in outs if LOCKED in o]
        ran = [o for o in outs if "no Ray cluster reachable" in o]
        assert len(refused) == 1 and len(ran) == 1, outs
        assert (first.returncode, second.returncode) == (2, 2)
        assert str(tmp_path / f"race{i}") in refused[0] and "on host " in refused[0]


def test_lock_is_released_by_a_killed_holder(tmp_path: Path) -> None:
    code = "import sys,time; from ermgap_ray.sweep import run_dir_lock\n"
    code += f"with run_dir_lock(__import__('pathlib').Path({str(tmp_path)!r})):\n"
    code += "    print('held', flush=True); time.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=re.escape(f"{LOCKED}{holder.pid} on host")):
        with run_dir_lock(tmp_path):
            pass
    holder.kill()
    holder.wait()
    with run_dir_lock(tmp_path):  # the kernel dropped the dead holder's lock
        pass


@pytest.mark.parametrize("kind", ["proc", "file", "readonly"])
def test_unwritable_storage_is_one_line_before_anything(tmp_path: Path, kind: str, capsys):
    from ermgap_ray.train.cli import main as train_main

    sweep_main = _sweep_main()

    if kind == "proc":
        storage = Path("/proc/ermgap-runs")
    elif kind == "file":
        storage = tmp_path / "plain-file"
        storage.write_text("x")
    else:
        storage = tmp_path / "ro"
        storage.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(storage)],
            capture_output=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.decode().strip()}")
    import ray

    ray_was_up = ray.is_initialized()
    try:
        t0 = time.monotonic()
        assert sweep_main(["--storage", str(storage), "--name", "x", "--preset", "smoke"]) == 2
        sweep_err = capsys.readouterr().err.strip()
        assert train_main(["--storage", str(storage), "--name", "x"]) == 2
        train_err = capsys.readouterr().err.strip()
        assert time.monotonic() - t0 < 10
    finally:
        if kind == "readonly":
            subprocess.run(["umount", str(storage)], check=False)
    for err in (sweep_err, train_err):
        assert err.startswith(f"error: not a writable directory: {storage} ("), err
        assert "\n" not in err
    assert ray.is_initialized() == ray_was_up, "the check ran before any cluster started"


def test_resume_refuses_knobs_that_differ_from_sweep_json(tmp_path: Path, capsys) -> None:
    sweep_main = _sweep_main()

    started = load_sweep_config("smoke", {"storage": str(tmp_path), "name": "r"}, ["epochs=2"])
    write_manifest(started.run_dir, started.to_dict(), status="interrupted")
    common = ["--storage", str(tmp_path), "--name", "r", "--resume"]
    assert sweep_main([*common, "--preset", "paper", "--seeds", "5", "--set", "epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resume continues") and "\n" not in err
    for knob in ("preset='paper' (was 'smoke')", "seeds=5 (was 1)", "--set epochs=3 (was 2)"):
        assert knob in err, err
    # Unchanged values and the runtime knobs (cluster, storage) are accepted.
    given = load_sweep_config("smoke", {"storage": str(tmp_path), "name": "r", "cluster": "x:1"})
    resumed = resume_config(started.to_dict(), given, {"cluster", "storage", "name"})
    assert resumed.cluster == "x:1" and resumed.trial == {**started.trial}
    assert read_manifest(started.run_dir).status == "interrupted"


@pytest.mark.parametrize("cli", [["sweeps/ablation.py"], ["-m", "ermgap_ray.train"]])
def test_help_shows_defaults_and_examples(cli: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, *cli, "--help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    text = done.stdout
    examples = text.split("examples:\n", 1)[1].splitlines()
    commands = [line for line in examples if line.startswith("  python ")]
    assert 3 <= len(commands) <= 5 and text.rstrip().endswith(examples[-1].rstrip())
    options = text.split("options:\n", 1)[1].split("\n\n", 1)[0]
    flags = [ln for ln in options.splitlines() if ln.lstrip().startswith("--")]
    blocks = options.split("\n  -")
    assert flags and all(("default" in b or "preset:" in b) for b in blocks[1:]), blocks
    assert "--gpus-per-worker" in options


@pytest.mark.slow
def test_train_cli_is_quiet_by_default(small_corpus: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "ermgap_ray.train", "--storage", str(tmp_path), "--name", "q"]
    cmd += ["--set", f"data={small_corpus}", "--set", "epochs=1", "--set", "bootstrap=20"]
    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    noise = ("FutureWarning", "Setting accelerator", "Loading weights", "Writing model shards")
    out = done.stdout + done.stderr
    assert not [n for n in noise if n in out], out[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["epoch"] == 1


@pytest.mark.slow
def test_live_run_refuses_others_and_sigterm_stops_it_like_ctrl_c(
    tmp_path: Path, ray_processes
) -> None:
    """A real driver: a second driver and a `--resume` of the live run are refused; SIGTERM
    (preemption) exits 143 with the resume hint, sweep.json says interrupted, no Ray process is
    left; then `--resume` finishes with every trial once."""
    import psutil

    before = ray_processes()
    args = ["--preset", "smoke", "--cluster", "local", "--storage", str(tmp_path)]
    args += ["--name", "live", "--set", "epochs=3"]
    live = _driver(*args)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(live.stdout), daemon=True)
    reader.start()
    lock = tmp_path / "live" / LOCK_FILE
    deadline = time.time() + 120
    while time.time() < deadline and f"pid {live.pid} " not in (
        lock.read_text() if lock.is_file() else ""
    ):
        assert live.poll() is None, "".join(lines)
        time.sleep(0.05)
    for extra in ([], ["--resume"]):
        other = _driver(*args, *extra)
        out = other.communicate(timeout=120)[0]
        assert other.returncode == 2 and f"{LOCKED}{live.pid} on host" in out, out
    deadline = time.time() + 300
    while time.time() < deadline and not any("RUNNING" in ln for ln in list(lines)):
        assert live.poll() is None, "".join(lines)
        time.sleep(0.5)
    time.sleep(2)
    live.send_signal(signal.SIGTERM)
    live.wait(timeout=180)
    reader.join(timeout=10)
    out = "".join(lines)
    assert live.returncode == 143, out[-3000:]
    assert "interrupted: sweep interrupted in phase 'grid'; continue it with --resume" in out
    assert "Stack trace" not in out and "SIGTERM received" not in out.split("interrupted:")[-1]
    assert read_manifest(tmp_path / "live").status == "interrupted"
    time.sleep(3)
    orphans = []
    for pid in ray_processes() - before:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                orphans.append(" ".join(psutil.Process(pid).cmdline()))
        except psutil.NoSuchProcess:
            pass
    assert not orphans, orphans

    resumed = _driver("--storage", str(tmp_path), "--name", "live", "--resume")
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out[-3000:]
    df = read_trials(tmp_path / "live")
    assert not df.duplicated(["trial_id", "epoch"]).any()
    assert df[df.is_final].trial_id.nunique() == 6 and set(df.status) == {"TERMINATED"}
