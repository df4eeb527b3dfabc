"""Sweeps on real Ray Tune: presets, grid, Optuna search, failures, SIGKILL + resume, 2 nodes.

Most tests use `fake_trial`, a real Tune function trainable that reports deterministic metrics,
so the Tune machinery is tested in seconds; the slow tests run the real Ray Train trainer.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest
import ray
from ray import cloudpickle, tune

from ermgap_ray.cluster import connect
from ermgap_ray.config import ConfigError, TrialConfig
from ermgap_ray.deploy import resolve_bounds
from ermgap_ray.errors import DataValidationError
from ermgap_ray.registry import PAPER_FAMILIES, SEARCH_SPACE
from ermgap_ray.results import read_manifest, read_trials, split_trial_config
from ermgap_ray.search import RAY_TRIAL_ID_ATTR, SearchSpace
from ermgap_ray.sweep import (
    SweepConfig,
    _prepare_inputs_probing_compiler,
    executor_for,
    expected_cost,
    grid_trials,
    load_sweep_config,
    run_sweep,
    trial_resources,
)

REPO = Path(__file__).resolve().parents[1]
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def fake_trial(config: dict) -> None:
    """Deterministic metrics from the config; family fixed-p2 with seed 1 raises."""
    family, cfg = split_trial_config(config)
    if family == "fixed-p2" and cfg.seed == 1:
        raise RuntimeError("planted failure in fixed-p2 seed 1")
    base = 0.5 + 0.01 * cfg.seed + 0.02 * cfg.p - 0.01 * cfg.lam
    epochs = max(cfg.epochs, 1)
    for epoch in range(1, epochs + 1):
        time.sleep(float(os.environ.get("FAKE_EPOCH_S", "0.05")))
        metrics = {
            "epoch": epoch if cfg.epochs else 0,
            "lambda": cfg.lam,
            "train/loss": 1.0 / epoch,
            "dev/wf1": base + 0.01 * epoch,
            "dev/max_gap_wf1": 0.2 / (1.0 + cfg.lam) / epoch,
        }
        if epoch == epochs:
            metrics |= {"is_final": 1, "test/wf1": base, "test/max_gap_wf1": 0.1}
        tune.report(metrics)


@pytest.fixture(scope="module")
def cluster():
    os.environ["FAKE_EPOCH_S"] = "0.05"
    info = connect("local", num_cpus=2)
    yield info
    ray.shutdown()


def _cfg(tmp_path: Path, name: str, **kw: object) -> SweepConfig:
    return load_sweep_config("smoke", {"storage": str(tmp_path), "name": name, **kw})


# ---------------------------------------------------------------------------- no Ray needed


def test_paper_preset_is_the_full_ablation() -> None:
    cfg = load_sweep_config("paper")
    trials = grid_trials(cfg)
    assert len(trials) == len(PAPER_FAMILIES) * 2 * 12 == 192
    by_family = {t["family"]: t for t in trials if t["seed"] == 0 and t["modality"] == "audio"}
    assert by_family["zero-shot"]["epochs"] == 0
    configs = [split_trial_config(t)[1] for t in trials]
    assert {c.epochs for c in configs} == {0, 6}, "TrialConfig's default 6 epochs"
    assert by_family["erm"]["objective"] == "erm" and by_family["erm"]["lam"] == 0.0
    assert (
        by_family["adaptive-p1"]["lambda_mode"] == "adaptive" and by_family["adaptive-p1"]["p"] == 1
    )
    assert by_family["meangap"]["objective"] == "meangap"
    hashes = {c.config_hash() for c in configs if c.epochs}
    assert len(hashes) == 168, "every trained trial is a distinct configuration"


def test_the_grid_runs_longest_first() -> None:
    """Longest-first scheduling: transcript prompts before audio-only ones, adaptive λ's
    per-epoch dev pass before the others, untrained references last; ties keep grid order."""
    configs = [split_trial_config(t)[1] for t in grid_trials(load_sweep_config("paper"))]
    costs = [expected_cost(c) for c in configs]
    assert costs == sorted(costs, reverse=True)
    assert configs[0].modality == "audio+text" and configs[0].adapts_lambda
    assert [c.epochs for c in configs[-24:]] == [0] * 24, "the 24 zero-shot references last"
    last_trained = configs[-25]
    assert last_trained.modality == "audio" and not last_trained.scores_dev_every_epoch
    first_erm = next(c for c in configs if c.objective == "erm")
    assert (first_erm.modality, first_erm.seed) == ("audio+text", 0)
    fixed = TrialConfig(epochs=2, lambda_mode="fixed")
    assert expected_cost(fixed.replace(dev_eval="every-epoch")) > expected_cost(fixed)


def test_overrides_flags_and_sets() -> None:
    cfg = load_sweep_config(
        "paper", {"seeds": 1, "modalities": None, "objectives": ["dev/wf1:max"]}, ["epochs=2"]
    )
    assert cfg.seeds == 1 and cfg.modalities == ["audio", "audio+text"]
    trials = grid_trials(cfg)
    assert {t["epochs"] for t in trials} == {0, 2}, "zero-shot keeps epochs=0 over --set"
    with pytest.raises(ConfigError, match="lamda"):
        load_sweep_config("paper", None, ["lamda=1"])
    with pytest.raises(ConfigError, match="metric:max"):
        load_sweep_config("paper", {"objectives": ["dev/wf1:up"]})
    with pytest.raises(ConfigError, match="presets: paper, robustness, search, smoke"):
        load_sweep_config("nope")


def test_trial_resources_never_hold_the_workers_cpus() -> None:
    """Train-executor trainables hold no CPU (their Train workers need it); zero-shot and
    tune-executor trainables run the loop themselves, so they hold one worker's CPU and GPU."""
    resources = trial_resources("train", gpus_per_worker=0.5)
    trained = resources({"trial": {"family": "erm", "epochs": 2}}).required_resources
    zero_shot = resources({"trial": {"family": "zero-shot", "epochs": 0}}).required_resources
    searched = resources({"family": "search", "p": 1, "lr": 1e-3}).required_resources
    assert trained.get("CPU", 0) == 0 and trained.get("GPU", 0) == 0
    assert zero_shot["CPU"] == 1 and zero_shot["GPU"] == 0.5
    assert searched == trained
    in_tune = trial_resources("tune", gpus_per_worker=0.0)
    assert in_tune({"trial": {"family": "erm", "epochs": 2}}).required_resources["CPU"] == 1


@pytest.mark.parametrize(
    ("kind", "workers", "gpus", "expected"),
    [
        ("auto", 1, 0.0, "tune"),
        ("auto", 2, 0.0, "train"),
        ("auto", 1, 0.5, "train"),
        ("train", 1, 0.0, "train"),
        ("tune", 1, 0.0, "tune"),
    ],
)
def test_executor_rule(kind: str, workers: int, gpus: float, expected: str) -> None:
    assert executor_for(kind, workers, gpus) == expected


def test_tune_executor_refuses_worker_groups() -> None:
    with pytest.raises(ConfigError, match="executor"):
        load_sweep_config("smoke", {"executor": "tune", "workers_per_trial": 2})


def test_search_space_is_conditional_and_valid() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    space = SearchSpace({"epochs": 1}, ["audio"])
    seen = set()
    for _ in range(40):
        trial = study.ask()
        constants = space(trial)
        values = {**trial.params, **constants}
        family, cfg = split_trial_config(values)
        assert family == "search" and cfg.epochs == 1
        seen.add(cfg.lambda_mode)
        if cfg.lambda_mode == "fixed":
            assert "eta" not in trial.params and "lam_max" not in trial.params
            lo, hi = SEARCH_SPACE["fixed"]["lam"][1:]
        else:
            assert {"eta", "epsilon", "lam_max", "lam"} <= set(trial.params)
            lo, hi = SEARCH_SPACE["adaptive"]["lam"][1:]
        assert lo <= cfg.lam <= hi and cfg.lora_r in (4, 8, 16)
        study.tell(trial, [0.5, 0.1])
    assert seen == {"fixed", "adaptive"}
    fixed = SearchSpace({"lr": 1e-3, "lambda_mode": "fixed"}, ["audio"])
    trial = study.ask()
    fixed(trial)
    assert "lr" not in trial.params and "lambda_mode" not in trial.params


def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    cli = [sys.executable, str(REPO / "sweeps" / "ablation.py"), "--storage", str(tmp_path)]
    done = subprocess.run(cli + ["--set", "p=3"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: config field 'p': must be 1 or 2 (got 3)"]
    t0 = time.monotonic()
    done = subprocess.run(
        cli + ["--cluster", "127.0.0.1:9"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "no Ray cluster reachable at 127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr and time.monotonic() - t0 < 30
    assert "smoke" in subprocess.run(cli + ["--help"], capture_output=True, text=True).stdout


# ---------------------------------------------------------------------------- real Tune


def test_grid_sweep_writes_results_and_survives_a_failed_trial(cluster, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "g", kind="grid", seeds=2, families=["zero-shot", "erm", "fixed-p2"])
    cfg.max_failures = 0
    result = run_sweep(cfg, trainable=fake_trial, progress_interval_s=1)
    assert (result.n_terminated, result.n_error) == (5, 1)

    df = read_trials(result.run_dir)
    assert not df.duplicated(["trial_id", "epoch"]).any()
    final = df[df.is_final]
    assert len(final) == 5 and set(final.status) == {"TERMINATED"}
    err = df[df.status == "ERROR"]
    assert err.trial_id.nunique() == 1
    assert err.error.iloc[0] == "RuntimeError: planted failure in fixed-p2 seed 1"
    assert (err.family.iloc[0], err.seed.iloc[0]) == ("fixed-p2", 1)
    erm = final[(final.family == "erm") & (final.seed == 1)].iloc[0]
    cfg_erm = TrialConfig.from_dict({**cfg.trial, **PAPER_FAMILIES["erm"], "seed": 1})
    assert erm.config_hash == cfg_erm.config_hash()
    assert erm["dev/wf1"] == pytest.approx(0.5 + 0.01 + 0.04 + 0.01)
    assert final.groupby("family").group_hash.nunique().to_dict() == {
        "erm": 1,
        "fixed-p2": 1,
        "zero-shot": 1,
    }
    assert sorted(df.groupby("trial_id").trial_index.first()) == list(range(6))

    manifest = read_manifest(result.run_dir)
    assert manifest.config["families"] == ["zero-shot", "erm", "fixed-p2"]
    assert manifest.status == "finished" and manifest.trials == {"terminated": 5, "error": 1}
    summary = result.summary.set_index("family")
    assert summary.loc["erm", "n"] == 2
    assert summary.loc["erm", "dev/wf1_mean"] == pytest.approx((0.55 + 0.56) / 2)

    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(_cfg(tmp_path, "g", kind="grid"), trainable=fake_trial)


def test_search_sweep_writes_an_optuna_study(cluster, tmp_path: Path) -> None:
    """The paper grid's warm-start points are the first trials, and the rest are sampled."""
    cfg = _cfg(tmp_path, "s", kind="search", num_samples=5, sampler="tpe")
    result = run_sweep(cfg, trainable=fake_trial, progress_interval_s=1)
    assert result.n_terminated == 5
    url = f"sqlite:///{result.run_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="s", storage=url)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 5
    points = SearchSpace(cfg.trial, cfg.modalities).warm_start_points(5)
    assert len(points) == 4
    assert [t.params for t in sorted(study.trials, key=lambda t: t.number)[:4]] == points
    final = read_trials(result.run_dir).query("is_final")
    assert sorted(round(t.values[0], 9) for t in complete) == sorted(
        round(v, 9) for v in final["dev/wf1"]
    )
    assert set(final.family) == {"search"} and set(final.epochs) == {1}


def test_resume_after_driver_sigkill(cluster, tmp_path: Path, kill_driver_mid_sweep) -> None:
    """A driver killed mid-search (constrained, TPE) resumes: every trial once, no duplicate
    rows or studies, the same sampler and the constraint on every trial, before and after."""
    script = f"""
import sys
from ray import cloudpickle
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_sweep
cloudpickle.register_pickle_by_value(test_sweep)
from ermgap_ray.sweep import load_sweep_config, run_sweep
cfg = load_sweep_config("smoke", {{"storage": {str(tmp_path)!r}, "name": "r", "kind": "search",
    "num_samples": 6, "max_concurrent": 2, "cluster": {cluster.address!r}, "sampler": "tpe",
    "constraints": ["dev/max_gap_wf1<=0.03"]}}, ["epochs=4"])
run_sweep(cfg, trainable=test_sweep.fake_trial, progress_interval_s=1)
"""
    env = {**os.environ, "FAKE_EPOCH_S": "0.7"}
    run_dir = tmp_path / "r"
    kill_driver_mid_sweep(script, run_dir, env=env)
    before = read_trials(run_dir)
    assert before[before.status == "TERMINATED"].trial_id.nunique() < 6

    cfg = _cfg(tmp_path, "r", resume=True, cluster=cluster.address)
    result = run_sweep(cfg, trainable=fake_trial, progress_interval_s=1)
    df = read_trials(run_dir)
    assert not df.duplicated(["trial_id", "epoch"]).any()
    final = df[df.is_final]
    assert len(final) == 6 and final.trial_id.nunique() == 6 and set(final.status) == {"TERMINATED"}
    assert set(final.epoch) == {4} and set(df.trial_id) == set(final.trial_id)
    # Trials the killed driver started after Tune's last experiment snapshot are unknown to the
    # restored run: their rows are dropped, and the searcher was asked again in their place.
    orphans = set(before.trial_id) - set(df.trial_id)
    done_before = set(before[before.status == "TERMINATED"].trial_id)
    assert done_before - orphans <= set(final.trial_id)
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert "RUNNING" not in [t.state.name for t in study.trials]
    # Each final trial is told once. An orphan may have been told too, just before the kill,
    # whether or not its TERMINATED row made it to disk; no other trial is in the study.
    told_ids = Counter(
        t.user_attrs[RAY_TRIAL_ID_ATTR] for t in study.trials if t.state.name == "COMPLETE"
    )
    assert all(told_ids[t] == 1 for t in final.trial_id), told_ids
    assert set(told_ids) - set(final.trial_id) <= orphans and max(told_ids.values()) == 1
    assert done_before & orphans <= set(told_ids)
    gaps = final.set_index("trial_id")["dev/max_gap_wf1"]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert all("dev/max_gap_wf1<=0.03" in t.constraints for t in complete)
    told = sorted(t.constraints["dev/max_gap_wf1<=0.03"] for t in complete)
    assert set(np.round(gaps - 0.03, 9)) <= set(np.round(told, 9))
    state = max((run_dir / "search").glob("searcher-state-*.pkl"), key=lambda p: p.stat().st_mtime)
    searcher = pickle.loads(state.read_bytes())
    assert isinstance(searcher["_sampler"], optuna.samplers.TPESampler)
    assert [str(b) for b in searcher["bounds"]] == ["dev/max_gap_wf1<=0.03"]
    assert read_manifest(run_dir).constraints == ["dev/max_gap_wf1<=0.03"]
    assert result.n_terminated == 6
    assert json.loads((run_dir / "sweep.json").read_text())["status"] == "finished"


# ---------------------------------------------------------------------------- real trainer


def _worker_nodes() -> set[str]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=1000, detail=True)
    return {a.node_id for a in actors}


@pytest.mark.slow
def test_smoke_preset_on_two_nodes(tmp_path: Path, free_port: int) -> None:
    """The real Ray Train trial on a 2-node cluster (1 CPU each): trials land on both nodes."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    nodes = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port,
        },
    )
    nodes.add_node(num_cpus=1)
    try:
        cfg = load_sweep_config(
            "smoke",
            {
                "storage": str(tmp_path),
                "name": "mn",
                "cluster": nodes.address,
                "kind": "grid",
                "families": ["erm", "fixed-p2"],
                "executor": "train",  # Ray Train workers, one per node
            },
        )
        result = run_sweep(cfg, progress_interval_s=5)
        assert result.n_terminated == 2 and result.n_error == 0
        final = result.trials[result.trials.is_final]
        assert set(final.epoch) == {1}
        assert all(Path(p).is_file() for p in final.predictions_path)
        assert final["test/wf1"].between(0.0, 1.0).all()
        assert final["test/wf1_lo"].le(final["test/wf1"]).all()
        assert len(_worker_nodes()) == 2
        _check_analysis_of(result.run_dir)
    finally:
        ray.shutdown()
        nodes.shutdown()


def _check_analysis_of(run_dir: Path) -> None:
    """The figure, the table and the operating point, from a real smoke run directory."""
    from ermgap_ray.deploy import choose_operating_point, load_operating_point

    assert (run_dir / "figures" / "pareto.png").stat().st_size > 10_000
    assert (run_dir / "tables" / "ablation.md").read_text().count("|") > 20
    strict, record = choose_operating_point(run_dir, max_gap=0.0)
    assert not strict.feasible and record is None and "closest" in strict.reason
    point, record = choose_operating_point(run_dir, max_gap=100.0)
    assert point.feasible and record["trial_id"] in point.trial_ids
    assert 0.0 <= record["test"]["test/wf1_lo"] <= record["test"]["test/wf1"]
    # The re-evaluated adapter reproduces the test numbers the trial reported.
    assert record["test"]["test/wf1"] == pytest.approx(record["test_reported"]["test/wf1"])
    model, loaded = load_operating_point(run_dir / "operating_point.json")
    assert loaded["adapter_path"] == record["adapter_path"] and not model.training


@pytest.mark.slow
def test_diverging_trial_is_an_error_row_and_not_retried(tmp_path: Path) -> None:
    """A real trial whose λ overflows float32 hits NonFiniteLoss: ERROR row, the sweep
    completes, and Tune's retry stops at the marker instead of training again."""
    if ray.is_initialized():
        ray.shutdown()
    cfg = load_sweep_config(
        "smoke",
        {
            "storage": str(tmp_path),
            "name": "nan",
            "kind": "grid",
            "families": ["fixed-p2"],
            "cluster": "local",
            "max_failures": 1,
        },
        ["lam=1e300"],
    )
    try:
        result = run_sweep(cfg, progress_interval_s=5)
    finally:
        ray.shutdown()
    assert (result.n_terminated, result.n_error) == (0, 1)
    row = result.trials.iloc[0]
    assert row.status == "ERROR" and row.error.startswith("NonFiniteLossError: NonFiniteLoss:")
    (marker,) = (result.run_dir / "grid").glob("*/NONFINITE_LOSS.txt")
    error_txt = (marker.parent / "error.txt").read_text()
    assert "NonFiniteTrialError" in error_txt


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["tune", "train"])
def test_worker_killed_inside_a_sweep_resumes_and_matches_uninterrupted(
    small_corpus: Path, tmp_path: Path, train_worker_killer, executor: str
) -> None:
    """SIGKILL of the process running the loop mid-trial (the Tune trainable, or the Train
    worker): Tune retries the trial, it resumes from the last epoch checkpoint with λ restored,
    and its final metrics equal an uninterrupted run's, bitwise (the same engine runs both).
    A zero-shot trial shares the 2 CPUs: it evaluates in its trainable, with no Train run."""
    import torch

    from ermgap_ray.train import run_local

    if ray.is_initialized():
        ray.shutdown()
    sets = [f"data={small_corpus}", "epochs=3", "batch_size=4", "lr=5e-3", "bootstrap=50"]
    cfg = load_sweep_config(
        "smoke",
        {
            "storage": str(tmp_path),
            "name": "kw",
            "kind": "grid",
            "families": ["zero-shot", "adaptive-p2"],
            "cluster": "local",
            "max_failures": 1,
            "executor": executor,
        },
        sets,
    )
    where = "grid" if executor == "tune" else "train"
    killer = train_worker_killer(tmp_path / "kw" / where, "*/checkpoint_*/trainer_state.json")
    killer.start()
    try:
        result = run_sweep(cfg, progress_interval_s=5)
    finally:
        ray.shutdown()
        killer.join()
    assert killer.killed, "no Ray Train worker was found to kill"
    assert (result.n_terminated, result.n_error) == (2, 0)
    zero_shot = result.trials[result.trials.family == "zero-shot"].iloc[0]
    assert zero_shot.epoch == 0 and Path(zero_shot.predictions_path).is_file()
    assert not list((result.run_dir / "train" / zero_shot.trial_id).glob("checkpoint_*"))
    df = result.trials[result.trials.family == "adaptive-p2"]
    assert not df.duplicated(["trial_id", "epoch"]).any()
    assert sorted(df.epoch) == [1, 2, 3] and set(df.status) == {"TERMINATED"}
    final = df[df.is_final].iloc[0]
    # Every result Tune received, across both attempts: a restart from scratch (which would
    # also match the uninterrupted numbers) reports epoch 1 twice; a resume does not.
    result_json = result.run_dir / "grid" / final.trial_id / "result.json"
    epochs = [json.loads(line)["epoch"] for line in result_json.read_text().splitlines()]
    assert epochs.count(1) == 1 and max(epochs) == 3, epochs

    trial = TrialConfig.from_dict({**cfg.trial, **PAPER_FAMILIES["adaptive-p2"], "seed": 0})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray worker, so float reductions run in the same order
    try:
        straight = run_local(trial, tmp_path / "straight", verbose=False)
    finally:
        torch.set_num_threads(threads)
    for key in ("lambda", "lambda_next", "dev/wf1", "dev/max_gap_wf1", "test/wf1"):
        assert final[key] == straight[key], key


@pytest.mark.slow
def test_smoke_preset_through_the_cli(tmp_path: Path) -> None:
    """`python sweeps/ablation.py --preset smoke`, as CI promises: the grid (zero-shot included)
    and the Optuna search with the real trainer, then the reports."""
    if ray.is_initialized():
        ray.shutdown()
    cmd = [sys.executable, "sweeps/ablation.py", "--preset", "smoke", "--cluster", "local"]
    cmd += ["--storage", str(tmp_path), "--num-samples", "4", "--sampler", "tpe"]
    cmd += ["--constraint", "dev/max_gap_wf1<=0.3"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "smoke"
    final = read_trials(run_dir).query("is_final")
    assert len(final) == 8 and set(final.status) == {"TERMINATED"}
    families = ["adaptive-p2", "erm", "fixed-p2", "search", "zero-shot"]
    assert sorted(final.family.unique()) == families
    assert final["test/wf1"].between(0, 1).all()
    assert final.predictions_path.map(os.path.isfile).all()
    # The 4-trial constrained search: warm-started from the paper grid, every trial told its
    # constraint value, and the operating point defaults to the sweep's bound.
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert [t.params for t in trials] == SearchSpace(
        {"epochs": 1, "bootstrap": 100}, ["audio"]
    ).warm_start_points(4)
    gaps = sorted(final.query("family == 'search'")["dev/max_gap_wf1"] - 0.3)
    assert sorted(t.constraints["dev/max_gap_wf1<=0.3"] for t in trials) == pytest.approx(gaps)
    assert "trials: 8 finished, 0 failed" in done.stdout
    reports = ("figures/pareto.png", "tables/ablation.md", "figures/hypervolume.png", "report.html")
    for report in reports:
        assert (run_dir / report).stat().st_size > 0, report
    manifest = read_manifest(run_dir)
    assert manifest.status == "finished" and manifest.constraints == ["dev/max_gap_wf1<=0.3"]
    assert resolve_bounds(run_dir).constraints == ["dev/max_gap_wf1<=0.3"]


def test_bad_input_reports_itself_while_the_compiler_probe_completes(monkeypatch):
    """Bad input still fails with its own error while the background compiler probe runs, and the
    probe finishes its builds (a killed one would leave a truncated test program behind); only a
    compiling sweep starts one."""
    import ermgap_ray.model
    import ermgap_ray.sweep

    started: list[subprocess.Popen] = []
    real_probe = ermgap_ray.model.start_compiler_probe

    def recording_probe() -> subprocess.Popen | None:
        started.append(real_probe())
        return started[-1]

    def bad_inputs(configs: list[TrialConfig]) -> dict:
        raise DataValidationError("manifest.csv row 3: audio file missing")

    monkeypatch.setattr(ermgap_ray.model, "start_compiler_probe", recording_probe)
    monkeypatch.setattr(ermgap_ray.sweep, "_prepare_inputs", bad_inputs)
    with pytest.raises(DataValidationError, match="row 3"):
        _prepare_inputs_probing_compiler([TrialConfig(torch_compile=False)])
    assert started == []
    with pytest.raises(DataValidationError, match="row 3"):
        _prepare_inputs_probing_compiler([TrialConfig(torch_compile=True)])
    assert len(started) == 1 and started[0].wait(timeout=300) == 0
