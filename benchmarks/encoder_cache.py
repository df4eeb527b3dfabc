"""Frozen-encoder cache speed-up, one JSON line: training-epoch time uncached / cached.

An epoch is DataLoader + forward + backward + AdamW over the training split (batch 16) of ~200
synthetic 1-3 s wav clips, on the tiny default backbone (4 s window) and on the same backbone
with a 30 s window (max_source_positions=1500, Qwen2-Audio-7B's). The cache build time is
reported too: it is paid once per (backbone, audio set) and shared by every trial.

    python benchmarks/encoder_cache.py [--clips 200] [--repeats 2] [--steps-30s 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from ermgap_ray.data.schema import EMOTIONS, GENDERS, LANGUAGES, SAMPLE_RATE
from ermgap_ray.features import SERDataset, build_or_load, collate_ser
from ermgap_ray.model import SERModel, materialize_tiny_backbone

BATCH_SIZE = 16


def _write_clips(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """Harmonic tones of 1-3 s with random pitch; 80% train, 20% dev."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        t = np.arange(int(SAMPLE_RATE * rng.uniform(1.0, 3.0))) / SAMPLE_RATE
        f0 = rng.uniform(90, 260)
        wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 2, 3)) * 0.2
        path = root / f"clip{i:04d}.wav"
        sf.write(path, wave.astype(np.float32), SAMPLE_RATE)
        rows.append(
            {
                "utt_id": f"clip{i:04d}",
                "split": "train" if i % 5 else "dev",
                "language": LANGUAGES[i % 3],
                "gender": GENDERS[i % 2],
                "emotion": EMOTIONS[int(rng.integers(len(EMOTIONS)))],
                "audio": str(path),
                "text": "",
                "speaker": f"spk{i % 7}",
                "dialogue_id": i // 5,
            }
        )
    return pd.DataFrame(rows)


def _paired_step_seconds(
    model: SERModel, datasets: dict[str, SERDataset], max_steps: int | None
) -> dict[str, list[float]]:
    """Wall time of each training step (its data loading included), the paths alternating step
    by step so that both see the same background load on a shared machine."""
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    iterators = {
        name: iter(DataLoader(ds, batch_size=BATCH_SIZE, shuffle=False, collate_fn=collate_ser))
        for name, ds in datasets.items()
    }
    times: dict[str, list[float]] = {name: [] for name in datasets}
    model.train()
    for _ in range(max_steps or len(next(iter(datasets.values())))):
        for name, iterator in iterators.items():
            start = time.perf_counter()
            batch = next(iterator, None)
            if batch is None:
                return times
            loss = torch.nn.functional.cross_entropy(model(batch), batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
    return times


def _measure(
    backbone: Path, records: pd.DataFrame, cache_root: Path, repeats: int, max_steps: int | None
) -> dict[str, float]:
    """Epoch time = median step time x steps per epoch: robust to other jobs' bursts."""
    start = time.perf_counter()
    cache = build_or_load(backbone, records, cache_root, progress=False)
    build = time.perf_counter() - start
    train = records[records["split"] == "train"]
    datasets = {
        "uncached": SERDataset(train, backbone, "audio", None),
        "cached": SERDataset(train, backbone, "audio", cache),
    }
    model = SERModel.from_backbone(backbone)
    steps: dict[str, list[float]] = {name: [] for name in datasets}
    for _ in range(repeats):
        for name, times in _paired_step_seconds(model, datasets, max_steps).items():
            steps[name] += times
    per_epoch = -(-len(train) // BATCH_SIZE)
    epoch = {name: float(np.median(times)) * per_epoch for name, times in steps.items()}
    return {
        "ratio": epoch["uncached"] / epoch["cached"],
        "uncached_epoch_s": epoch["uncached"],
        "cached_epoch_s": epoch["cached"],
        "cache_build_s": build,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2, help="epochs per path and window")
    parser.add_argument(
        "--steps-30s", type=int, default=4, help="steps per epoch timed at 30 s (the slow one)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 like a 1-CPU Ray Train worker (and stable on a shared machine)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="ermgap-bench-") as tmp:
        root = Path(tmp)
        (root / "wav").mkdir()
        records = _write_clips(root / "wav", args.clips)
        result: dict[str, float | int] = {
            "train_clips": int((records["split"] == "train").sum()),
            "batch_size": BATCH_SIZE,
            "torch_threads": torch.get_num_threads(),
        }
        for label, positions, max_steps in (("4s", 200, None), ("30s", 1500, args.steps_30s)):
            backbone = materialize_tiny_backbone(
                root / f"tiny-{label}", max_source_positions=positions
            )
            measured = _measure(backbone, records, root / "cache", args.repeats, max_steps)
            for key, value in measured.items():
                result[f"{key}_{label}"] = value
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
