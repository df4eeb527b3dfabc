"""A compact, throttled progress table for sweeps, in plain lines (CI logs have no TTY).

Replaces Ray's per-result log spam: one table every `interval_s` when something changed, and a
one-liner the moment a trial finishes or fails. ETA = mean duration of finished trials ×
remaining trials / concurrency (trials run in waves of `concurrency`).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from ermgap_ray.results import error_summary, read_trial_error, split_trial_config

COLUMNS = ("trial", "family", "modality", "seed", "status", "epoch", "dev wf1", "dev gap", "time")


def _pct(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else f"{100 * v:.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def eta_seconds(durations: list[float], remaining: int, concurrency: int) -> float | None:
    """Finished trials' mean duration × remaining / concurrency; None before any finishes."""
    if not durations:
        return None
    return sum(durations) / len(durations) * remaining / max(1, concurrency)


def render(rows: list[dict[str, Any]], eta: float | None, title: str = "") -> str:
    """The table as text: a header, one line per trial, and a totals line with the ETA."""
    cells = [COLUMNS] + [
        (
            r["trial"],
            r["family"],
            r["modality"],
            str(r["seed"]),
            r["status"],
            f"{r['epoch']}/{r['epochs']}",
            _pct(r.get("dev_wf1")),
            _pct(r.get("dev_gap")),
            _duration(r.get("elapsed")),
        )
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(str(c[i]).ljust(widths[i]) for i in range(len(COLUMNS))) for c in cells]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    status = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
    head = f"== {title} " if title else "== "
    lines.insert(0, f"{head}{status}; ETA {_duration(eta)}")
    return "\n".join(lines)


class ProgressTable(Callback):
    """Tune callback printing `render(...)` at most every `interval_s`, and only on change."""

    def __init__(
        self,
        concurrency: int,
        interval_s: float = 10.0,
        title: str = "",
        stream: TextIO | None = None,
        total: int | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.interval_s = interval_s
        self.title = title
        self.stream = stream
        self.total = total
        self._last_print = 0.0
        self._dirty = False
        self._results: dict[str, dict[str, Any]] = {}
        self._started: dict[str, float] = {}
        self._durations: dict[str, float] = {}

    def setup(self, **info: Any) -> None:
        """Fresh timers on start and on --resume (a restored callback carries old ones)."""
        self._last_print, self._dirty = 0.0, False
        self._results, self._started, self._durations = {}, {}, {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "stream": None}

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def _row(self, trial: Any) -> dict[str, Any]:
        family, cfg = split_trial_config(trial.config)
        result = self._results.get(trial.trial_id, {})
        start = self._started.get(trial.trial_id)
        elapsed = self._durations.get(trial.trial_id)
        if elapsed is None and start is not None:
            elapsed = time.monotonic() - start
        return {
            "trial": trial.trial_id,
            "family": family,
            "modality": cfg.modality,
            "seed": cfg.seed,
            "status": trial.status,
            "epoch": result.get("epoch", 0),
            "epochs": cfg.epochs,
            "dev_wf1": result.get("dev/wf1"),
            "dev_gap": result.get("dev/max_gap_wf1"),
            "elapsed": elapsed,
        }

    def table(self, trials: list[Any]) -> str:
        done = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        total = max(self.total or 0, len(trials))
        durations = [d for tid, d in self._durations.items()]
        eta = eta_seconds(durations, total - len(done), self.concurrency)
        return render([self._row(t) for t in trials], eta, self.title)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started.setdefault(trial.trial_id, time.monotonic())
        self._dirty = True

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        self._results[trial.trial_id] = result
        self._dirty = True

    def _finish(self, trial: Any, what: str, error: str | None = None) -> None:
        start = self._started.get(trial.trial_id)
        if start is not None:
            self._durations[trial.trial_id] = time.monotonic() - start
        row = self._row(trial)
        self._print(
            f"[{what}] {row['trial']} {row['family']} {row['modality']} seed={row['seed']} "
            f"epoch {row['epoch']}/{row['epochs']} dev wf1={_pct(row['dev_wf1'])} "
            f"gap={_pct(row['dev_gap'])} in {_duration(row['elapsed'])}"
            + (f": {error}" if error else "")
        )
        self._dirty = True

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FAILED", error_summary(read_trial_error(trial)))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if self._dirty and now - self._last_print >= self.interval_s and trials:
            self._print(self.table(trials))
            self._last_print, self._dirty = now, False

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if trials:
            self._print(self.table(trials))
