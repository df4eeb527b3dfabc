"""The trial on Ray Train with DeepSpeed ZeRO: 2 gloo workers, adapters, a killed worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from ermgap_ray.config import TrialConfig
from ermgap_ray.train import build_trainer, final_metrics, predict, prepare_trial_inputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def base_cfg(small_corpus: Path) -> TrialConfig:
    cfg = TrialConfig(data=str(small_corpus), epochs=3, batch_size=4, bootstrap=50, lr=5e-3)
    prepare_trial_inputs(cfg)  # driver-side validation + cache, as the CLI and sweeps do
    return cfg


def _fit(cfg: TrialConfig, storage: Path, name: str, **kw) -> dict:
    trainer = build_trainer(cfg, workers=2, name=name, storage_path=str(storage), **kw)
    return final_metrics(trainer.fit())


@pytest.fixture(scope="module")
def uninterrupted(ray_local, base_cfg, tmp_path_factory) -> dict:
    return _fit(base_cfg, tmp_path_factory.mktemp("ray"), "straight", verbose=False)


def _predictions_from_adapter(cfg: TrialConfig, adapter: str) -> np.ndarray:
    from ermgap_ray.features import SERDataset, collate_ser
    from ermgap_ray.model import SERModel

    inputs = prepare_trial_inputs(cfg, progress=False)
    model = SERModel.from_adapter(inputs.backbone_dir, adapter).eval()
    test = inputs.records[inputs.records["split"] == "test"].reset_index(drop=True)
    dataset = SERDataset(test, inputs.backbone_dir, cfg.modality, inputs.cache)
    return predict(model, dataset, collate_ser, torch.device("cpu"), 0, 1).y_pred


def _check_adapter_round_trip(cfg: TrialConfig, final: dict) -> None:
    tensors = load_file(str(Path(final["adapter_path"]) / "adapter_model.safetensors"))
    assert tensors and all(t.size > 0 for t in tensors.values())
    assert any(np.abs(t).sum() > 0 for k, t in tensors.items() if "lora_B" in k)
    reported = np.load(final["predictions_path"], allow_pickle=False)["y_pred"]
    np.testing.assert_array_equal(_predictions_from_adapter(cfg, final["adapter_path"]), reported)


def test_two_workers_zero2_report_every_metric_and_a_loadable_adapter(base_cfg, uninterrupted):
    assert uninterrupted["epoch"] == 3 and uninterrupted["is_final"] == 1
    for key in ("lambda", "train/loss", "train/gap", "dev/wf1", "dev/max_gap_wf1", "test/wf1"):
        assert np.isfinite(uninterrupted[key]), key
    _check_adapter_round_trip(base_cfg, uninterrupted)


def test_two_workers_zero3_with_sharded_lora_saves_gathered_adapter(ray_local, base_cfg, tmp_path):
    # Threshold 0 really shards the tiny LoRA tensors, which is what hides the empty-save bug.
    cfg = base_cfg.replace(zero_stage=3, zero3_persistence_threshold=0, epochs=1)
    final = _fit(cfg, tmp_path, "zero3", verbose=False)
    assert final["epoch"] == 1
    _check_adapter_round_trip(cfg, final)


def test_killed_worker_resumes_from_checkpoint_and_matches_uninterrupted(
    ray_local, base_cfg, uninterrupted, tmp_path, train_worker_killer
):
    killer = train_worker_killer(tmp_path / "killed", "checkpoint_*/trainer_state.json")
    killer.start()
    final = _fit(base_cfg, tmp_path, "killed", max_failures=1, verbose=False)
    killer.join()
    assert killer.killed, "no Ray Train worker was found to kill"
    assert final["epoch"] == 3
    for key in ("lambda", "dev/wf1", "dev/max_gap_wf1", "test/wf1", "test/max_gap_wf1"):
        assert final[key] == pytest.approx(uninterrupted[key], abs=1e-6), key
