"""The README's "When things go wrong" table quotes the messages users really see.

Each quote is turned into a pattern (`…`, PATH, NAME and HOST:PORT match run-specific text)
and matched against the message the code produces for that fault, so a reworded error fails
here until the README follows.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ermgap_ray.cluster import probe
from ermgap_ray.config import TrialConfig
from ermgap_ray.data.io import resolve_data
from ermgap_ray.data.sampler import GroupStratifiedBatchSampler, SmallGroupWarning
from ermgap_ray.data.validate import LongClipWarning
from ermgap_ray.errors import user_errors
from ermgap_ray.fs import ensure_writable_dir
from ermgap_ray.model import resolve_backbone
from ermgap_ray.results import error_summary, load_trials
from ermgap_ray.sweep import SweepInterrupted, load_sweep_config, resume_config, run_dir_lock
from ermgap_ray.train import run_local
from ermgap_ray.train.session import checkpoint_error

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDERS = {"…": ".*?", "PATH": ".+?", "NAME": r"\S+", "HOST:PORT": r"\S+"}
SPAN = re.compile(r"``\s?(.+?)\s?``|`([^`]+)`")


def readme_quotes() -> list[str]:
    """The code spans of the table's first column that quote a message."""
    section = README.read_text().split("## When things go wrong", 1)[1].split("\n## ", 1)[0]
    quotes = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith(("| you see", "|---")):
            continue
        first_cell = SPAN.sub(lambda m: m.group(0).replace("|", "\0"), line).split("|")[1]
        for match in SPAN.finditer(first_cell.replace("\0", "|")):
            text = match.group(1) or match.group(2)
            if ":" in text:
                quotes.append(text)
    return quotes


def as_pattern(quote: str) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(k) for k in PLACEHOLDERS)
    parts = re.split(f"({alternatives})", quote)
    return re.compile("".join(PLACEHOLDERS.get(p, re.escape(p)) for p in parts), re.DOTALL)


def _user_error(action: Callable[[], object]) -> str:
    """What a CLI prints for a user error raised by `action` (sweeps/ablation.py, train.py)."""
    with pytest.raises(user_errors()) as err:
        action()
    return f"error: {err.value}"


def _write(small_corpus: Path, tmp_path: Path, edit: Callable[[pd.DataFrame], object]) -> Path:
    df = pd.read_csv(small_corpus, keep_default_na=False)
    df["audio"] = [str((small_corpus.parent / a).resolve()) for a in df["audio"]]
    edit(df)
    path = tmp_path / "manifest.csv"
    df.to_csv(path, index=False)
    return path


def _manifest(small_corpus: Path, tmp_path: Path, edit: Callable[[pd.DataFrame], object]) -> str:
    path = _write(small_corpus, tmp_path, edit)
    return _user_error(lambda: resolve_data(str(path)))


def _warning(action: Callable[[], object], category: type[Warning]) -> str:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        action()
    (hit,) = [w for w in seen if issubclass(w.category, category)]
    return f"{category.__name__}: {hit.message}"


def _backbone_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "backbone"
    shutil.copytree(resolve_backbone(None), copy)
    return copy


def _truncated_weights(tmp_path: Path) -> str:
    weights = _backbone_copy(tmp_path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return _user_error(lambda: resolve_backbone(weights.parent))


def _no_tokenizer(tmp_path: Path) -> str:
    copy = _backbone_copy(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (copy / name).unlink(missing_ok=True)
    return _user_error(lambda: resolve_backbone(copy))


def _held_lock(tmp_path: Path) -> str:
    with run_dir_lock(tmp_path):
        return _user_error(lambda: run_dir_lock(tmp_path).__enter__())


def _resume_differs(tmp_path: Path) -> str:
    stored = load_sweep_config("smoke", {"storage": str(tmp_path)}).to_dict()
    given = load_sweep_config("paper", {"storage": str(tmp_path), "name": "smoke"})
    return _user_error(lambda: resume_config(stored, given, {"preset"}))


def _truncated_parquet(tmp_path: Path) -> str:
    (tmp_path / "trials.parquet").write_bytes(b"PAR1")
    return _user_error(lambda: load_trials(tmp_path))


def _operating_point_bound() -> str:
    golden = Path(__file__).parent / "golden_run" / "smoke"
    cmd = [sys.executable, "analysis/operating_point.py", str(golden), "--max-gap", "-5"]
    done = subprocess.run(cmd, cwd=README.parent, capture_output=True, text=True)
    assert done.returncode == 2
    return done.stderr.strip()


def _long_clip(small_corpus: Path, tmp_path: Path) -> str:
    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, np.zeros(90 * 16_000, dtype=np.float32), 16_000)
    path = _write(
        small_corpus, tmp_path, lambda df: df.loc.__setitem__((3, "audio"), str(long_wav))
    )
    return _warning(lambda: resolve_data(str(path), max_seconds=4.0), LongClipWarning)


def _no_text(small_corpus: Path, tmp_path: Path) -> str:
    path = _write(small_corpus, tmp_path, lambda df: df.__setitem__("text", ""))
    return _user_error(lambda: resolve_data(str(path), modality="audio+text"))


def _small_group() -> str:
    ids = np.array([0] * 40 + [1] * 2)
    make = lambda: GroupStratifiedBatchSampler(ids, batch_size=4, seed=0)  # noqa: E731
    return _warning(make, SmallGroupWarning)


def _emotion(df: pd.DataFrame) -> None:
    df.loc[df["utt_id"] == "ja_0042", "utt_id"] = "renamed"
    df.loc[16, ["utt_id", "emotion"]] = ["ja_0042", "happy"]


def _clip(df: pd.DataFrame, write: Callable[[Path], object], folder: Path) -> None:
    """Row 3 points at a clip `write` makes in `folder` (the shared corpus stays untouched)."""
    path = folder / "broken.wav"
    write(path)
    df.loc[3, "audio"] = str(path)


def _truncated(path: Path, source: Path) -> None:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _not_qwen(tmp_path: Path) -> str:
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return _user_error(lambda: resolve_backbone(tmp_path / "bert"))


def _nonfinite(small_corpus: Path, tmp_path: Path) -> str:
    cfg = TrialConfig(
        data=str(small_corpus), epochs=1, batch_size=4, lambda_mode="fixed", lam=1e300
    )
    with pytest.raises(FloatingPointError) as err:
        run_local(cfg, tmp_path / "nan", engine="torch", verbose=False)
    return error_summary(f"Traceback ...\n{err.value.__class__.__name__}: {err.value}")


def _drop(mask: Callable[[pd.DataFrame], pd.Series]) -> Callable[[pd.DataFrame], None]:
    return lambda df: df.drop(df.index[mask(df)], inplace=True)


@pytest.fixture
def produced(small_corpus: Path, tmp_path: Path, free_port: int) -> Callable[[str], str]:
    """The real message for the quote that contains a given key phrase."""
    wav = next(small_corpus.parent.rglob("*.wav"))

    def clip(write: Callable[[Path], object]) -> Callable[[pd.DataFrame], None]:
        return lambda df: _clip(df, write, tmp_path)

    manifest_edits: dict[str, Callable[[pd.DataFrame], object]] = {
        "unknown emotion": _emotion,
        "duplicate utt_id": lambda df: df.loc.__setitem__((5, "utt_id"), df.utt_id[2]),
        "audio file not found": clip(lambda p: None),
        "audio file is empty": clip(lambda p: p.write_bytes(b"")),
        "truncated:": clip(lambda p: _truncated(p, wav)),
        "unreadable or not audio": clip(lambda p: p.write_text("text")),
        "44100 Hz": clip(lambda p: sf.write(p, np.zeros((4410, 2)), 44100)),
        "has gender F only": _drop(
            lambda df: (df.split == "dev") & (df.language == "ja") & (df.gender == "M")
        ),
        "is empty; need rows": _drop(lambda df: df.split == "test"),
    }
    disk_full = OSError(errno.ENOSPC, "No space left on device")
    others: dict[str, Callable[[], str]] = {
        "config field 'p'": lambda: _user_error(lambda: TrialConfig(p=3)),
        "unknown config key": lambda: _user_error(lambda: TrialConfig.from_dict({"lamda": 1})),
        "not a Qwen2-Audio": lambda: _not_qwen(tmp_path),
        "does not exist": lambda: _user_error(lambda: resolve_backbone(tmp_path / "none")),
        "no Ray cluster": lambda: _user_error(lambda: probe(f"127.0.0.1:{free_port}")),
        "NonFiniteLoss": lambda: _nonfinite(small_corpus, tmp_path),
        "earlier epoch is intact": lambda: (
            f"error: {checkpoint_error(3, tmp_path, disk_full, tmp_path)}"
        ),
        "no earlier checkpoint exists": lambda: (
            f"error: {checkpoint_error(1, tmp_path, OSError(errno.EIO, 'I/O error'), None)}"
        ),
        "not a writable directory": lambda: _user_error(
            lambda: ensure_writable_dir(Path("/proc/ermgap-runs"))
        ),
        "in use by another driver": lambda: _held_lock(tmp_path),
        "--resume continues": lambda: _resume_differs(tmp_path),
        "model.safetensors is truncated": lambda: _truncated_weights(tmp_path),
        "has no tokenizer": lambda: _no_tokenizer(tmp_path),
        "needs transcripts": lambda: _no_text(small_corpus, tmp_path),
        "LongClipWarning": lambda: _long_clip(small_corpus, tmp_path),
        "SmallGroupWarning": _small_group,
        "not a Parquet file": lambda: _truncated_parquet(tmp_path),
        "--max-gap -5": _operating_point_bound,
        "interrupted": lambda: (
            "interrupted: " + str(SweepInterrupted.in_phase("grid", load_sweep_config("paper")))
        ),
    }

    def make(quote: str) -> str:
        (key,) = [k for k in (*manifest_edits, *others) if k in quote]
        if key in manifest_edits:
            return _manifest(small_corpus, tmp_path, manifest_edits[key])
        return others[key]()

    return make


def test_the_table_quotes_every_message_once() -> None:
    quotes = readme_quotes()
    assert len(quotes) == 28, quotes
    assert len(set(quotes)) == len(quotes)


@pytest.mark.parametrize("quote", readme_quotes())
def test_readme_quote_is_the_real_message(quote: str, produced: Callable[[str], str]) -> None:
    message = produced(quote)
    assert "\n" not in message
    assert as_pattern(quote).fullmatch(message), f"README: {quote}\nactual: {message}"
