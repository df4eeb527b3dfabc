"""trials.parquet rows, dedupe on resume, error summaries and sweep.json (no Ray cluster)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
from ray.tune.experiment import Trial

from ermgap_ray.config import ConfigError, TrialConfig
from ermgap_ray.results import (
    MANIFEST_FILE,
    ROW_KEYS,
    TRIALS_FILE,
    SweepManifest,
    error_summary,
    group_hash,
    load_trials,
    read_manifest,
    read_trials,
    split_trial_config,
    write_manifest,
)
from ermgap_ray.results_writer import ResultsWriter


def _trial(trial_id: str, family: str = "erm", **values: object) -> Trial:
    """A real (stub) Tune Trial: the object Tune hands its callbacks."""
    return Trial("fn", config={"trial": {"family": family, **values}}, trial_id=trial_id, stub=True)


def _result(epoch: int, wf1: float, final: bool = False, **extra: object) -> dict:
    out = {"epoch": epoch, "dev/wf1": wf1, "dev/max_gap_wf1": 0.1, "lambda": 0.5}
    out |= {"train/loss": 1.0, "time_total_s": 3.0, "config/trial": "ignored", **extra}
    if final:
        out |= {"is_final": 1, "test/wf1": wf1 - 0.01, "test/wf1_lo": 0.4, "test/wf1_hi": 0.6}
    return out


def test_group_hash_ignores_seed_only() -> None:
    a, b = TrialConfig(seed=0), TrialConfig(seed=1)
    assert a.config_hash() != b.config_hash()
    assert group_hash(a) == group_hash(b)
    assert group_hash(a) != group_hash(TrialConfig(seed=0, p=1))


def test_split_trial_config_grid_and_flat() -> None:
    family, cfg = split_trial_config({"trial": {"family": "fixed-p1", "p": 1, "lam": 0.3}})
    assert (family, cfg.p, cfg.lam) == ("fixed-p1", 1, 0.3)
    family, cfg = split_trial_config({"family": "search", "lr": 1e-3, "lora_r": 4})
    assert (family, cfg.lr, cfg.lora_r) == ("search", 1e-3, 4)
    with pytest.raises(ConfigError, match="unknown config key"):
        split_trial_config({"family": "x", "lamda": 1.0})


def test_writer_rows_schema_status_and_resume_dedupe(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path, static={"data_fingerprint": "fp1"})
    t0, t1 = _trial("ab_00000", seed=0), _trial("ab_00001", seed=1)
    writer.on_trial_start(0, [], t0)
    writer.on_trial_start(0, [], t1)
    writer.on_trial_result(0, [], t0, _result(1, 0.50))
    writer.on_trial_result(0, [], t1, _result(1, 0.40))
    df = read_trials(tmp_path)
    assert len(df) == 2 and set(df["status"]) == {"RUNNING"}
    writer.on_trial_result(0, [], t0, _result(2, 0.55, final=True))
    writer.on_trial_result(0, [], t0, {**_result(2, 0.55, final=True), "adapter_path": "/a"})
    writer.on_trial_complete(0, [], t0)

    df = read_trials(tmp_path)
    assert set(ROW_KEYS) <= set(df.columns)
    assert set(TrialConfig.field_names()) <= set(df.columns)
    assert "config/trial" not in df.columns
    rows0 = df[df.trial_id == "ab_00000"].sort_values("epoch")
    assert rows0["epoch"].tolist() == [1, 2]
    assert rows0["status"].tolist() == ["TERMINATED", "TERMINATED"]
    assert rows0["is_final"].tolist() == [False, True]
    assert rows0["adapter_path"].tolist()[1] == "/a"
    assert rows0["test/wf1"].tolist()[1] == pytest.approx(0.54)
    assert df["trial_index"].tolist() == [0, 0, 1]
    assert df["config_hash"].iloc[0] == TrialConfig(seed=0).config_hash()
    assert df["group_hash"].nunique() == 1
    assert set(df["data_fingerprint"]) == {"fp1"}

    # A restored driver re-reports trial 1's epoch 1 and then finishes it: nothing duplicates.
    resumed = ResultsWriter(tmp_path, static={"data_fingerprint": "fp1"})
    resumed.on_trial_start(0, [], t1)
    resumed.on_trial_result(0, [], t1, _result(1, 0.41))
    resumed.on_trial_result(0, [], t1, _result(2, 0.45, final=True))
    resumed.on_trial_complete(0, [], t1)
    df = read_trials(tmp_path)
    assert not df.duplicated(["trial_id", "epoch"]).any()
    assert len(df) == 4
    assert df.set_index(["trial_id", "epoch"]).loc[("ab_00001", 1), "dev/wf1"] == 0.41
    assert df.groupby("trial_id")["trial_index"].first().to_dict() == {
        "ab_00000": 0,
        "ab_00001": 1,
    }
    assert not list(tmp_path.glob(f".{TRIALS_FILE}*")), "temp files must not be left behind"


def test_writer_error_row_without_results(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path, index_offset=10)
    trial = _trial("cd_00003", family="groupdro", objective="groupdro")
    writer.on_trial_start(0, [], trial)
    writer.on_trial_error(0, [], trial)
    df = read_trials(tmp_path)
    assert len(df) == 1
    row = df.iloc[0]
    assert (row.status, row.family, row.trial_index, bool(row.is_final)) == (
        "ERROR",
        "groupdro",
        10,
        False,
    )
    assert pd.isna(row.epoch) and isinstance(row.error, str)


def test_error_summary_prefers_nonfinite_and_innermost_type() -> None:
    tb = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 3, in f\n'
        "ray.exceptions.RayTaskError(TrainingFailedError): ray::_Inner.train() (pid=1)\n"
        "ray.train.TrainingFailedError: Training failed due to worker errors:\n"
        "NonFiniteLossError: NonFiniteLoss: epoch 0 step 3: loss=nan, groups=[1.0, nan]\n"
    )
    assert error_summary(tb) == "NonFiniteLossError: NonFiniteLoss: epoch 0 step 3: loss=nan, " + (
        "groups=[1.0, nan]"
    )
    tb2 = (
        "Traceback (most recent call last):\n"
        '  File "t.py", line 9, in fake\n'
        "    raise RuntimeError('planted failure')\n"
        "RuntimeError: planted failure\n"
        "\nThe above exception was the direct cause of the following exception:\n\n"
        "ray.exceptions.RayTaskError(RuntimeError): ray::ImplicitFunc.train() (pid=5)\n"
    )
    assert error_summary(tb2) == "RuntimeError: planted failure"
    assert error_summary(None) == "unknown error"


def test_manifest_round_trip(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, {"name": "x", "seeds": 3}, status="running")
    manifest = read_manifest(tmp_path)
    assert isinstance(manifest, SweepManifest) and manifest.path == path
    assert json.loads(path.read_text()) == manifest.raw
    assert manifest.config == {"name": "x", "seeds": 3} and manifest.name == "x"
    assert set(manifest.versions) == {
        "python",
        "torch",
        "ray",
        "deepspeed",
        "transformers",
        "peft",
        "optuna",
    }
    assert manifest.versions["ray"].startswith("2.60")
    assert manifest.git_commit is None or len(manifest.git_commit) == 40
    assert manifest.status == "running" and manifest.raw["status"] == "running"
    assert not list(tmp_path.glob(f".{MANIFEST_FILE}*")), "temp files must not be left behind"


def test_manifest_of_a_real_sweep_config_carries_its_name_and_objectives(tmp_path: Path) -> None:
    """Issue 11: the writer nests name/objectives under `config` as `metric:mode` strings; the
    one reader must give them back, not fall back to the defaults."""
    from ermgap_ray.sweep import load_sweep_config

    objectives = ["dev/wf1:max", "dev/max_gap_avg:min"]
    cfg = load_sweep_config("search", {"name": "hv", "objectives": objectives})
    write_manifest(tmp_path, asdict(cfg), status="finished", trials={"terminated": 2})
    manifest = read_manifest(tmp_path)
    assert manifest.name == "hv"
    assert manifest.objectives == [("dev/wf1", "max"), ("dev/max_gap_avg", "min")]
    assert manifest.constraints == [] and manifest.trials == {"terminated": 2}
    unnamed = asdict(load_sweep_config("search")) | {"constraints": ["dev/max_gap_wf1<=0.05"]}
    write_manifest(tmp_path, unnamed)
    manifest = read_manifest(tmp_path)
    assert manifest.name == "search" and manifest.constraints == ["dev/max_gap_wf1<=0.05"]
    assert manifest.status == "unknown"


def test_read_manifest_missing_and_broken(tmp_path: Path) -> None:
    assert read_manifest(tmp_path, missing_ok=True) is None
    with pytest.raises(FileNotFoundError, match=f"no {MANIFEST_FILE} in {tmp_path}"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="is not readable JSON"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, {"objectives": ["dev/wf1:up"]})
    with pytest.raises(ConfigError, match="dev/wf1:up"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("keep", [0, 4, -30])
def test_truncated_trials_file_names_the_file(tmp_path: Path, keep: int) -> None:
    """Issue 14: an empty or cut-off file is named, not pyarrow's "Could not open Parquet input
    source '<Buffer>'"."""
    path = tmp_path / TRIALS_FILE
    pd.DataFrame({"trial_id": ["a"] * 50, "is_final": [True] * 50}).to_parquet(path)
    path.write_bytes(path.read_bytes()[:keep])
    for reader in (read_trials, load_trials):
        with pytest.raises(
            ConfigError, match=r"trials\.parquet is truncated or not a Parquet"
        ) as e:
            reader(tmp_path)
        assert str(path) in str(e.value) and "<Buffer>" not in str(e.value)
        assert len(str(e.value).splitlines()) == 1


def test_load_trials_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        load_trials(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"no {TRIALS_FILE} in"):
        load_trials(tmp_path)
    pd.DataFrame({"trial_id": pd.Series([], dtype=str)}).assign(is_final=[]).to_parquet(
        tmp_path / TRIALS_FILE
    )
    with pytest.raises(ConfigError, match="has no rows"):
        load_trials(tmp_path)
    pd.DataFrame({"trial_id": ["a", "b"], "is_final": [True, None]}).to_parquet(
        tmp_path / TRIALS_FILE
    )
    assert load_trials(tmp_path)["is_final"].tolist() == [True, False]


def test_results_module_imports_neither_ray_nor_torch() -> None:
    code = (
        "import sys, ermgap_ray.results as r; r.read_manifest; "
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_read_trials_missing_dir_has_schema(tmp_path: Path) -> None:
    assert list(read_trials(tmp_path / "nope").columns) == list(ROW_KEYS)


WRITER = """
import sys
from ray.tune.experiment import Trial
from ermgap_ray.results_writer import ResultsWriter

writer = ResultsWriter(sys.argv[1])
extra = {f"dev/extra_{j}": float(j) for j in range(300)}  # ~0.5 MB: slow, tearable writes
for i in range(int(sys.argv[2])):
    trial = Trial("fn", config={"trial": {"seed": i}}, trial_id=f"t_{i:05d}", stub=True)
    writer.on_trial_start(0, [], trial)
    writer.on_trial_result(0, [], trial, {"epoch": 1, "dev/wf1": 0.5, **extra})
    print(i + 1, flush=True)
"""


def _start_writer(run_dir: Path, n: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(run_dir), str(n)], stdout=subprocess.PIPE, text=True
    )


def test_a_reader_never_sees_a_half_written_file_and_a_killed_writer_loses_nothing(
    tmp_path: Path,
) -> None:
    """Reads race a writer process; then the writer is SIGKILLed mid-stream. Every read parses
    and row counts never go backwards; after the kill, every flushed row is there."""
    writer = _start_writer(tmp_path, 150)
    sizes: list[int] = []
    while writer.poll() is None:
        if (tmp_path / TRIALS_FILE).exists():
            sizes.append(len(read_trials(tmp_path)))  # raises on a torn file
    assert writer.returncode == 0
    assert len(set(sizes)) >= 10, f"too few distinct states were read: {sorted(set(sizes))}"
    assert sizes == sorted(sizes) and len(read_trials(tmp_path)) == 150

    run_dir = tmp_path / "killed"
    writer = _start_writer(run_dir, 10_000)
    flushed = 0
    for line in writer.stdout:
        flushed = int(line)
        if flushed >= 40:
            break
    time.sleep(random.uniform(0.0, 0.1))  # land the kill anywhere inside a later write
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    survived = read_trials(run_dir)
    assert len(survived) >= flushed and not survived.duplicated("trial_id").any()
    ResultsWriter(run_dir)  # what --resume does first: stale temp files are swept away
    assert [p.name for p in run_dir.iterdir()] == [TRIALS_FILE]
