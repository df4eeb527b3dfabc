"""The trial recipe in one process: determinism, exact resume, zero-shot, NaN, accumulation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ermgap_ray.config import TrialConfig
from ermgap_ray.data.manifest import read_manifest, write_manifest
from ermgap_ray.errors import ConfigError
from ermgap_ray.train import LocalSession, NonFiniteLossError, Recipe, run_local
from ermgap_ray.train.cli import main


@pytest.fixture
def cfg(small_corpus: Path) -> TrialConfig:
    return TrialConfig(data=str(small_corpus), epochs=2, batch_size=8, bootstrap=50, lr=5e-3)


def _adapter(path: str) -> dict[str, np.ndarray]:
    return load_file(str(Path(path) / "adapter_model.safetensors"))


def test_trial_is_bitwise_deterministic_and_saves_artifacts(cfg, tmp_path):
    first = run_local(cfg, tmp_path / "a", verbose=False)
    second = run_local(cfg, tmp_path / "b", verbose=False)
    metrics = {k: v for k, v in first.items() if k.startswith(("dev/", "test/", "train/"))}
    assert metrics and all(second[k] == v for k, v in metrics.items())
    assert first["epoch"] == 2 and first["is_final"] == 1
    assert {"test/wf1", "test/max_gap_wf1", "test/wf1_lo", "test/wf1_hi"} <= set(first)
    assert first["test/wf1_lo"] <= first["test/wf1"] <= first["test/wf1_hi"]
    a, b = _adapter(first["adapter_path"]), _adapter(second["adapter_path"])
    assert a.keys() == b.keys() and all(a[k].size and np.array_equal(a[k], b[k]) for k in a)
    # LoRA B starts at zero; training must have moved it.
    assert any(np.abs(v).sum() > 0 for k, v in a.items() if "lora_B" in k)
    preds = np.load(first["predictions_path"], allow_pickle=False)
    assert len(preds["y_pred"]) == len(preds["utt_id"]) == len(set(preds["utt_id"]))


class _Interrupted(RuntimeError):
    pass


class _DiesAfterFirstEpoch(LocalSession):
    """A real session whose process 'dies' right after the first checkpoint lands."""

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        raise _Interrupted


def test_resume_continues_exactly(cfg, tmp_path):
    cfg = cfg.replace(epochs=3)
    uninterrupted = run_local(cfg, tmp_path / "straight", verbose=False)
    with pytest.raises(_Interrupted):
        Recipe(cfg, _DiesAfterFirstEpoch(tmp_path / "killed", keep=2), verbose=False).run()
    state = json.loads((tmp_path / "killed/checkpoints/epoch_1/trainer_state.json").read_text())
    assert state["epoch"] == 0
    resumed = run_local(cfg, tmp_path / "killed", resume=True, verbose=False)
    assert resumed["epoch"] == 3
    for key in ("lambda", "dev/wf1", "dev/max_gap_wf1", "test/wf1", "train/loss"):
        assert resumed[key] == uninterrupted[key], key


def test_checkpoint_retention_keeps_last_k(cfg, tmp_path):
    run_local(cfg.replace(epochs=3, keep_checkpoints=1), tmp_path, verbose=False)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch_3"]


def test_zero_shot_evaluates_once_without_training(cfg, tmp_path):
    final = run_local(cfg.replace(epochs=0), tmp_path, verbose=False)
    assert final["epoch"] == 0 and final["is_final"] == 1
    assert "train/loss" not in final and 0.0 <= final["test/wf1"] <= 1.0
    assert all(not v.any() for k, v in _adapter(final["adapter_path"]).items() if "lora_B" in k)


def test_adaptive_lambda_follows_the_dev_gap(cfg, tmp_path):
    cfg = cfg.replace(lambda_mode="adaptive", lam=0.5, eta=3.0, epsilon=0.0, lam_max=0.9)
    final = run_local(cfg, tmp_path, verbose=False)
    # λ_1 = clip(0.5 + 3·Δ_dev,0, 0, 0.9): a positive dev gap moves it up, and the clip holds.
    assert 0.5 < final["lambda"] <= 0.9
    # λ after the last update is logged too, from the same rule.
    expected = min(max(final["lambda"] + 3.0 * final["dev/loss_gap"], 0.0), 0.9)
    assert final["lambda_next"] == pytest.approx(expected)


def test_dev_is_scored_after_every_epoch_only_where_training_reads_it(cfg, tmp_path):
    erm = cfg.replace(objective="erm", lambda_mode="fixed", lam=0.0, epochs=3)
    runs = {}
    for mode in ("auto", "every-epoch"):
        session = LocalSession(tmp_path / mode, keep=1)
        Recipe(erm.replace(dev_eval=mode), session, verbose=False).run()
        runs[mode] = session.reports
    assert ["dev/wf1" in r for r in runs["auto"]] == [False, False, True]
    assert all("dev/wf1" in r for r in runs["every-epoch"])
    assert [r["lambda_next"] for r in runs["auto"]] == [0.0] * 3
    # Skipping the earlier dev passes changes no score: training never reads them.
    final, reference = runs["auto"][-1], runs["every-epoch"][-1]
    scores = [k for k in reference if k.startswith(("dev/", "test/", "train/"))]
    assert scores and all(final[k] == reference[k] for k in scores)

    session = LocalSession(tmp_path / "adaptive", keep=1)
    Recipe(cfg, session, verbose=False).run()  # cfg: adaptive λ, dev_eval=auto
    assert all("dev/loss_gap" in r for r in session.reports)
    with pytest.raises(ConfigError, match="dev_eval"):
        cfg.replace(dev_eval="last-epoch")


def test_undefined_dev_gap_leaves_lambda_unchanged(small_corpus, tmp_path):
    """A dev split in which no emotion occurs for both genders has no TPR gap (NaN); adaptive
    λ must stay where it is, not step down by η·ε as a gap of 0 would make it."""
    records = read_manifest(small_corpus)
    dev = records["split"] == "dev"
    female_only, male_only = ("neutral", "joy", "sadness"), ("anger", "surprise", "fear")
    for gender, pool in (("F", female_only), ("M", male_only)):
        rows = dev & (records["gender"] == gender)
        records.loc[rows, "emotion"] = [pool[i % 3] for i in range(int(rows.sum()))]
    write_manifest(records, tmp_path / "corpus" / "manifest.csv")
    cfg = TrialConfig(
        data=str(tmp_path / "corpus"),
        epochs=2,
        batch_size=8,
        bootstrap=20,
        lambda_mode="adaptive",
        lam=0.5,
        eta=1.0,
        epsilon=0.1,
        dev_gap_metric="tpr",
    )
    session = LocalSession(tmp_path / "run", keep=1)
    Recipe(cfg, session, verbose=False).run()
    assert [r["epoch"] for r in session.reports] == [1, 2]
    assert all(np.isnan(r["dev/max_gap_tpr"]) for r in session.reports)
    assert [(r["lambda"], r["lambda_next"]) for r in session.reports] == [(0.5, 0.5)] * 2


def test_running_group_losses_and_stratum_coverage_are_logged(cfg, tmp_path):
    final = run_local(cfg, tmp_path, verbose=False)
    losses = {k: v for k, v in final.items() if k.startswith("train/loss/")}
    assert len(losses) == 6 and all(np.isfinite(v) for v in losses.values())
    gaps = [
        abs(final[f"train/loss/{lang}_F"] - final[f"train/loss/{lang}_M"])
        for lang in "en ja de".split()
    ]
    assert final["train/running_gap"] == pytest.approx(max(gaps))
    assert 0.0 <= final["train/worst_valid_frac"] <= 1.0


@pytest.mark.parametrize("engine", ["deepspeed", "torch"])
def test_divergence_names_the_step_and_group_losses(cfg, tmp_path, engine):
    with pytest.raises(NonFiniteLossError, match=r"NonFiniteLoss: epoch \d+ step \d+.*group"):
        run_local(cfg.replace(lr=1e30, epochs=3), tmp_path, engine=engine, verbose=False)


def test_gradient_accumulation_and_every_objective_train(cfg, tmp_path):
    for i, objective in enumerate(("erm", "meangap", "groupdro")):
        final = run_local(
            cfg.replace(objective=objective, grad_accum=2, batch_size=4, epochs=1),
            tmp_path / str(i),
            engine="torch",
            verbose=False,
        )
        assert np.isfinite(final["train/loss"]) and final["epoch"] == 1


def test_cli_prints_one_json_line_and_rejects_bad_config(cfg, tmp_path, capsys):
    args = ["--storage", str(tmp_path), "--name", "cli", "--set", f"data={cfg.data}"]
    args += ["--set", "epochs=1", "--set", "batch_size=8", "--set", "bootstrap=20"]
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["epoch"] == 1
    assert main([*args, "--set", "p=3"]) == 2
    assert "config field 'p'" in capsys.readouterr().err
    assert main(args) == 2  # the run dir exists and --resume was not given


def test_a_reused_trial_process_prepares_its_inputs_once(monkeypatch, cfg):
    """Tune's reuse_actors hands one process many trials: the corpus and encoder cache are
    opened once per input spec. A grid alternating its two modalities opens each once; a third
    spec evicts the least recently used."""
    from ermgap_ray.train import recipe

    opened = []
    monkeypatch.setattr(recipe, "_WORKER_INPUTS", {})
    monkeypatch.setattr(
        recipe,
        "prepare_trial_inputs",
        lambda c, **kw: opened.append((c.modality, c.twin_seed)) or object(),
    )
    first = recipe.worker_inputs(cfg)
    assert recipe.worker_inputs(cfg.replace(seed=3, objective="erm")) is first
    text = recipe.worker_inputs(cfg.replace(modality="audio+text"))
    assert text is not first
    assert recipe.worker_inputs(cfg.replace(seed=4)) is first
    assert recipe.worker_inputs(cfg.replace(modality="audio+text", seed=5)) is text
    other_twin = cfg.twin_seed + 1
    recipe.worker_inputs(cfg.replace(twin_seed=other_twin))  # evicts the least recently used
    assert recipe.worker_inputs(cfg.replace(modality="audio+text")) is text
    assert recipe.worker_inputs(cfg) is not first
    modality, twin = cfg.modality, cfg.twin_seed
    assert opened == [
        (modality, twin),
        ("audio+text", twin),
        (modality, other_twin),
        (modality, twin),
    ]
