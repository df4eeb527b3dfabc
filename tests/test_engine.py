"""The torch engine does what a one-rank ZeRO engine does, so `engine=auto` may pick it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ermgap_ray.config import TrialConfig
from ermgap_ray.train import run_local
from ermgap_ray.train.engine import resolve_engine


def _adapter(path: str) -> dict[str, np.ndarray]:
    return load_file(str(Path(path) / "adapter_model.safetensors"))


@pytest.mark.slow
def test_torch_and_deepspeed_give_the_same_lora_weights(small_corpus, tmp_path):
    """Two epochs (~20 AdamW steps with clipping) of the same config and seed on both engines:
    the LoRA weights agree to 1e-6 and so do the metrics."""
    cfg = TrialConfig(
        data=str(small_corpus), epochs=2, batch_size=8, bootstrap=20, lr=5e-3, lambda_mode="fixed"
    )
    on_torch = run_local(cfg, tmp_path / "torch", engine="torch", verbose=False)
    on_zero = run_local(cfg, tmp_path / "zero", engine="deepspeed", verbose=False)
    a, b = _adapter(on_torch["adapter_path"]), _adapter(on_zero["adapter_path"])
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    moved = max(float(np.abs(v).max()) for k, v in a.items() if "lora_B" in k)
    assert moved > 1e-3  # the steps really changed the weights
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)
    for key in ("train/loss", "dev/loss_gap", "test/wf1"):
        assert on_torch[key] == pytest.approx(on_zero[key], abs=1e-6), key


@pytest.mark.slow
def test_compiled_language_model_trains_as_eager_does(small_corpus, tmp_path):
    """`torch_compile` swaps kernels, not maths: two epochs give the eager LoRA weights to 1e-6
    and the same metrics, from one train graph and one eval graph (no recompile per batch
    length)."""
    from torch._dynamo.utils import counters

    cfg = TrialConfig(
        data=str(small_corpus), epochs=2, batch_size=8, bootstrap=20, lr=5e-3, lambda_mode="fixed"
    )
    eager = run_local(cfg, tmp_path / "eager", engine="torch", verbose=False)
    counters.clear()
    compiled = run_local(
        cfg.replace(torch_compile=True), tmp_path / "compiled", engine="torch", verbose=False
    )
    assert counters["stats"]["unique_graphs"] == 2
    a, b = _adapter(eager["adapter_path"]), _adapter(compiled["adapter_path"])
    assert max(float(np.abs(v).max()) for k, v in a.items() if "lora_B" in k) > 1e-3
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)
    for key in ("train/loss", "dev/loss_gap", "test/wf1"):
        assert eager[key] == pytest.approx(compiled[key], abs=1e-6), key


@pytest.mark.parametrize(
    "compiled", [False, pytest.param(True, marks=pytest.mark.slow, id="torch_compile")]
)
def test_torch_engine_resumes_its_own_checkpoint_exactly(small_corpus, tmp_path, compiled):
    """The torch engine's checkpoint (safetensors + JSON) restores weights and AdamW moments,
    bitwise, compiled language model or not."""
    cfg = TrialConfig(
        data=str(small_corpus),
        epochs=2,
        batch_size=8,
        bootstrap=20,
        lr=5e-3,
        torch_compile=compiled,
    )
    straight = run_local(cfg, tmp_path / "straight", engine="torch", verbose=False)
    run_local(cfg.replace(epochs=1), tmp_path / "cut", engine="torch", verbose=False)
    resumed = run_local(cfg, tmp_path / "cut", engine="torch", resume=True, verbose=False)
    a, b = _adapter(straight["adapter_path"]), _adapter(resumed["adapter_path"])
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert resumed["test/wf1"] == straight["test/wf1"]


@pytest.mark.parametrize(
    ("world", "device", "expected"),
    [(1, "cpu", "torch"), (2, "cpu", "deepspeed"), (1, "cuda", "deepspeed")],
)
def test_auto_engine_rule(world, device, expected):
    import torch

    assert resolve_engine("auto", world, torch.device(device)) == expected
    assert resolve_engine("deepspeed", 1, torch.device("cpu")) == "deepspeed"
