"""Experiment tracking on real Ray Tune, real MLflow (SQLite store) and real TensorBoard files.

Most tests run `tracked_trial`, a Tune function trainable that reports what the recipe reports
(per-epoch dev metrics and λ, the final test metrics with CIs, then the trainable's trailing
repeat of the final result), so the trackers see real Tune callbacks in seconds; the slow test
runs the smoke preset with the real trainer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient
from ray import cloudpickle, tune
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ermgap_ray.cluster import connect
from ermgap_ray.config import ConfigError, TrialConfig
from ermgap_ray.results import read_trials, split_trial_config
from ermgap_ray.sweep import grid_trials, load_sweep_config, run_sweep
from ermgap_ray.tracking import (
    TB_SWEEP_DIR,
    default_tracking_uri,
    log_sweep_artifacts,
    quiet_trackers,
    require_trackers,
    tracker_callbacks,
)

REPO = Path(__file__).resolve().parents[1]
cloudpickle.register_pickle_by_value(sys.modules[__name__])
BOTH = ["tensorboard", "mlflow"]


def tracked_trial(config: dict) -> None:
    """The recipe's report sequence with deterministic numbers; zero-shot reports epoch 0."""
    family, cfg = split_trial_config(config)
    base = 0.5 + 0.01 * cfg.seed + 0.02 * cfg.p
    final: dict = {}
    for epoch in range(1, cfg.epochs + 1) if cfg.epochs else [0]:
        time.sleep(float(os.environ.get("FAKE_EPOCH_S", "0.05")))
        metrics = {
            "epoch": epoch,
            "lambda": cfg.lam * epoch,
            "dev/wf1": base + 0.01 * epoch,
            "dev/max_gap_wf1": 0.2 / (1 + epoch),
        }
        if cfg.epochs:
            metrics |= {"lambda_next": cfg.lam * (epoch + 1), "train/loss": 1.0 / epoch}
            metrics["train/loss/en+text_F"] = 1.5 / epoch  # a multimodal stratum's name
        if epoch == cfg.epochs:
            metrics |= {"is_final": 1, "test/wf1": base, "test/max_gap_wf1": 0.1}
            metrics |= {"test/wf1_lo": base - 0.02, "test/wf1_hi": base + 0.02}
            metrics["predictions_path"] = f"predictions/{tune.get_context().get_trial_id()}.npz"
        tune.report(metrics)
        final = metrics
    tune.report(final)  # as sweep.make_trainable does after the loop


@pytest.fixture(scope="module")
def cluster():
    os.environ["FAKE_EPOCH_S"] = "0.05"
    if ray.is_initialized():
        ray.shutdown()
    info = connect("local", num_cpus=2)
    yield info
    ray.shutdown()


@pytest.fixture(autouse=True)
def own_store(monkeypatch) -> None:
    """Every sweep here logs to its run directory's own store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _client(run_dir: Path) -> MlflowClient:
    quiet_trackers()
    return MlflowClient(default_tracking_uri(run_dir))


def _runs(run_dir: Path, kind: str = "trial") -> list:
    client = _client(run_dir)
    experiment = client.get_experiment_by_name(run_dir.name)
    return client.search_runs([experiment.experiment_id], f"tags.kind = '{kind}'")


def _scalars(trial_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(trial_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _check_trackers(run_dir: Path, epochs: int) -> None:
    """One MLflow run per trial with the trial's params, tags and per-epoch history, and
    each trial's TensorBoard scalars at its epochs, each step once."""
    df = read_trials(run_dir)
    final = df[df.is_final]
    runs = _runs(run_dir)
    by_trial = {r.data.tags["trial_id"]: r for r in runs}
    assert len(runs) == len(by_trial) == df.trial_id.nunique() == len(final)
    client = _client(run_dir)
    for _, row in final.iterrows():
        run = by_trial[row.trial_id]
        tune_dir = run_dir / row.phase / row.trial_id
        config = {"family": row.family, **{k: row[k] for k in TrialConfig.field_names()}}
        assert run.data.params == {k: str(v) for k, v in config.items()}
        assert run.data.params["family"] == row.family
        assert run.data.tags["family"] == row.family and run.data.tags["modality"] == row.modality
        assert run.info.status == "FINISHED"
        steps = [0] if row.family == "zero-shot" else list(range(1, epochs + 1))
        history = client.get_metric_history(run.info.run_id, "dev/wf1")
        assert [m.step for m in history] == steps
        rows = df[df.trial_id == row.trial_id].sort_values("epoch")
        assert [m.value for m in history] == pytest.approx(list(rows["dev/wf1"]))
        assert [m.step for m in client.get_metric_history(run.info.run_id, "lambda")] == steps
        for key in ("test/wf1", "test/wf1_lo", "test/wf1_hi"):
            (test,) = client.get_metric_history(run.info.run_id, key)
            assert test.step == steps[-1] and test.value == pytest.approx(row[key])
        assert run.data.tags["predictions_path"] == row.predictions_path
        logged = {k for k in rows.columns if k.startswith("train/") and rows[k].notna().any()}
        assert {k.replace("+", "_") for k in logged} <= set(run.data.metrics)  # `+`: not MLflow
        assert row.family == "zero-shot" or any("+text" in k for k in logged)
        tb = _scalars(tune_dir, "dev/wf1")
        assert [s for s, _ in tb] == steps
        assert [v for _, v in tb] == pytest.approx(list(rows["dev/wf1"]))
        assert [s for s, _ in _scalars(tune_dir, "test/wf1_lo")] == steps[-1:]


# ---------------------------------------------------------------------------- no Ray needed


@pytest.mark.parametrize("tracker,module", [("mlflow", "mlflow"), ("tensorboard", "tensorboardX")])
def test_missing_package_is_a_config_error(monkeypatch, tracker: str, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    expected = f"tracker '{tracker}' needs the {module} package: pip install 'ermgap-ray[tracking]'"
    for call in (lambda: require_trackers([tracker]), lambda: tracker_callbacks([tracker], Path())):
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value) == expected
    assert tracker_callbacks([], Path()) == []


def test_sweep_artifacts_reach_both_trackers(tmp_path: Path) -> None:
    """The figure (PNG as a TensorBoard image) and the table (Markdown as text) go to
    RUN_DIR/tensorboard_sweep and to the MLflow "sweep" run; logging twice shows them once."""
    from matplotlib.figure import Figure

    run_dir = tmp_path / "art"
    (run_dir / "figures").mkdir(parents=True)
    (run_dir / "tables").mkdir()
    png = run_dir / "figures" / "pareto.png"
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(png)
    md = run_dir / "tables" / "ablation.md"
    md.write_text("| family | W-F1 |\n|---|---|\n| ERM | 55.0 |\n")
    (run_dir / "sweep.json").write_text("{}\n")
    for _ in range(2):
        log_sweep_artifacts(BOTH, run_dir, [png, md])

    acc = EventAccumulator(str(run_dir / TB_SWEEP_DIR), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("figures/pareto")] == [0]
    (text,) = acc.Tensors("tables/ablation/text_summary")
    assert "| ERM | 55.0 |" in text.tensor_proto.string_val[0].decode()

    (sweep,) = _runs(run_dir, kind="sweep")
    assert sweep.info.status == "FINISHED"
    client = _client(run_dir)
    listed = {
        a.path
        for folder in ("figures", "tables")
        for a in client.list_artifacts(sweep.info.run_id, folder)
    }
    assert listed == {"figures/pareto.png", "tables/ablation.md"}
    assert "sweep.json" in {a.path for a in client.list_artifacts(sweep.info.run_id)}


# ---------------------------------------------------------------------------- real Tune


def test_smoke_sweep_logs_every_trial_to_both_trackers(cluster, tmp_path: Path) -> None:
    cfg = load_sweep_config(
        "smoke",
        {"storage": str(tmp_path), "name": "tr", "cluster": cluster.address, "trackers": BOTH},
        ["epochs=3"],
    )
    result = run_sweep(cfg, trainable=tracked_trial, progress_interval_s=1)
    assert (result.n_terminated, result.n_error) == (len(grid_trials(cfg)) + cfg.num_samples, 0)
    _check_trackers(result.run_dir, epochs=3)
    phases = {r.data.tags["phase"] for r in _runs(result.run_dir)}
    assert phases == {"grid", "search"}
    (sweep,) = _runs(result.run_dir, kind="sweep")
    assert all(
        r.data.tags["mlflow.parentRunId"] == sweep.info.run_id for r in _runs(result.run_dir)
    )


def test_resumed_sweep_neither_duplicates_nor_drops_runs(
    cluster, tmp_path: Path, kill_driver_mid_sweep
) -> None:
    """SIGKILL the driver mid-grid, then --resume: the trials finished before keep their one
    run, the interrupted ones continue theirs, the rest get one each; no step twice."""
    smoke = load_sweep_config("smoke")
    total = len(grid_trials(smoke)) + smoke.num_samples
    script = f"""
import sys
from ray import cloudpickle
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_tracking
cloudpickle.register_pickle_by_value(test_tracking)
from ermgap_ray.sweep import load_sweep_config, run_sweep
import ray
# The trials run in the test's cluster: slow them down there, so the kill lands mid-sweep.
ray.init(address={cluster.address!r}, runtime_env={{"env_vars": {{"FAKE_EPOCH_S": "0.7"}}}})
cfg = load_sweep_config("smoke", {{"storage": {str(tmp_path)!r}, "name": "rs",
    "max_concurrent": 2, "cluster": {cluster.address!r}, "trackers": {BOTH!r}}}, ["epochs=4"])
run_sweep(cfg, trainable=test_tracking.tracked_trial, progress_interval_s=1)
"""
    run_dir = tmp_path / "rs"
    kill_driver_mid_sweep(script, run_dir)
    before = {r.data.tags["trial_id"]: r for r in _runs(run_dir)}
    finished = {t: r.info.run_id for t, r in before.items() if r.info.status == "FINISHED"}
    assert finished and 2 <= len(before) < total

    cfg = load_sweep_config(
        "smoke",
        {"storage": str(tmp_path), "name": "rs", "resume": True, "cluster": cluster.address},
    )
    result = run_sweep(cfg, trainable=tracked_trial, progress_interval_s=1)
    assert result.n_terminated == total
    _check_trackers(run_dir, epochs=4)
    after = {r.data.tags["trial_id"]: r.info.run_id for r in _runs(run_dir)}
    assert {t: after[t] for t in before} == {t: r.info.run_id for t, r in before.items()}
    assert set(finished) <= set(after)


def test_cli_missing_package_is_one_line_exit_2(cluster, tmp_path: Path, small_corpus) -> None:
    code = (
        "import runpy, sys; sys.modules['mlflow'] = None; "
        "sys.argv = ['ablation.py'] + sys.argv[1:]; "
        "runpy.run_path('sweeps/ablation.py', run_name='__main__')"
    )
    args = ["--preset", "smoke", "--tracker", "mlflow", "--storage", str(tmp_path)]
    args += ["--name", "nomlflow", "--cluster", cluster.address, "--set", f"data={small_corpus}"]
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        "error: tracker 'mlflow' needs the mlflow package: pip install 'ermgap-ray[tracking]'"
    ]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "nomlflow" / "sweep.json").exists()


# ---------------------------------------------------------------------------- real trainer


@pytest.mark.slow
def test_smoke_preset_with_the_real_trainer_logs_to_both_trackers(
    cluster, tmp_path: Path, small_corpus: Path
) -> None:
    cfg = load_sweep_config(
        "smoke",
        {
            "storage": str(tmp_path),
            "name": "real",
            "cluster": cluster.address,
            "families": ["zero-shot", "adaptive-p2"],
            "modalities": ["audio+text"],  # its strata are named `en+text`
            "num_samples": 1,
            "trackers": BOTH,
        },
        [f"data={small_corpus}", "epochs=2", "batch_size=8", "bootstrap=20"],
    )
    result = run_sweep(cfg, progress_interval_s=5)
    assert (result.n_terminated, result.n_error) == (3, 0)
    _check_trackers(result.run_dir, epochs=2)
    assert any(p.suffix == ".png" for p in result.reports)
    acc = EventAccumulator(str(result.run_dir / TB_SWEEP_DIR), size_guidance={"images": 0})
    acc.Reload()
    assert "figures/pareto" in acc.Tags()["images"]
