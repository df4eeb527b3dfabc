"""Families, their labels and styles, the gap kinds and every searched knob's range.

One Ray-free source (DomainBed's `hparams_registry`): the grid, the Optuna space, the tables,
the figures and the CLIs' `choices` all read from here, so a sweep and a report never disagree.
"""

from __future__ import annotations

from typing import Any

# The paper's ablation (DESIGN.md "Baselines and ablations"). A family sets only what defines
# it, so `trial:` / `--set` values (lam, eta, epochs...) reach every family that uses them.
# mean-gap uses fixed λ with p=2: it isolates max-vs-mean from the λ schedule, and fixed-p2 is
# its max-gap twin.
PAPER_FAMILIES: dict[str, dict[str, Any]] = {
    "zero-shot": {"objective": "erm", "lambda_mode": "fixed", "lam": 0.0, "epochs": 0},
    "erm": {"objective": "erm", "lambda_mode": "fixed", "lam": 0.0},
    "fixed-p1": {"objective": "minmaxgap", "lambda_mode": "fixed", "p": 1},
    "fixed-p2": {"objective": "minmaxgap", "lambda_mode": "fixed", "p": 2},
    "adaptive-p1": {"objective": "minmaxgap", "lambda_mode": "adaptive", "p": 1},
    "adaptive-p2": {"objective": "minmaxgap", "lambda_mode": "adaptive", "p": 2},
    "groupdro": {"objective": "groupdro", "lambda_mode": "fixed", "lam": 0.0},
    "meangap": {"objective": "meangap", "lambda_mode": "fixed", "p": 2},
}
SEARCH_FAMILY = "search"
FAMILIES: tuple[str, ...] = (*PAPER_FAMILIES, SEARCH_FAMILY)
# References are shown beside the methods but never chosen as "fairest" or as an operating
# point: an untrained backbone is fair only because it is equally bad for everyone.
REFERENCE_FAMILIES: tuple[str, ...] = ("zero-shot",)
BASELINE_FAMILY = "erm"

FAMILY_STYLE: dict[str, tuple[str, str]] = {
    "zero-shot": ("#7f7f7f", "X"),
    "erm": ("#000000", "o"),
    "fixed-p1": ("#1f77b4", "s"),
    "fixed-p2": ("#17becf", "D"),
    "adaptive-p1": ("#d62728", "^"),
    "adaptive-p2": ("#ff7f0e", "v"),
    "groupdro": ("#2ca02c", "P"),
    "meangap": ("#9467bd", "h"),
    "search": ("#8c564b", "o"),
}
UNKNOWN_STYLE = ("#bcbd22", "o")
FAMILY_LABELS: dict[str, str] = {
    "zero-shot": "Zero-shot",
    "erm": "ERM",
    "fixed-p1": "Fixed λ, p=1",
    "fixed-p2": "Fixed λ, p=2",
    "adaptive-p1": "Adaptive λ, p=1",
    "adaptive-p2": "Adaptive λ, p=2",
    "groupdro": "Group DRO",
    "meangap": "Mean-gap",
    "search": "Search",
}

# Gap kinds of DESIGN.md "Metrics": gap_<kind>/<lang>, max_gap_<kind>.
GAP_KINDS: tuple[str, ...] = ("tpr", "fpr", "wf1", "acc", "avg")
METRIC_LABELS = {"wf1": "W-F1", "acc": "ACC", "tpr": "TPR", "fpr": "FPR", "avg": "AVG"}

# Search ranges per knob: (kind, *args). "choice" -> categorical, "log" -> log-uniform float,
# "float" -> uniform float. Grouped so the adaptive knobs are only drawn for adaptive trials.
SEARCH_SPACE: dict[str, dict[str, tuple[Any, ...]]] = {
    "common": {
        "p": ("choice", (1, 2)),
        "lambda_mode": ("choice", ("fixed", "adaptive")),
    },
    "fixed": {"lam": ("log", 1e-2, 3.0)},
    "adaptive": {
        "lam_max": ("log", 0.3, 5.0),  # never below lam's range: lam_max >= lam
        "lam": ("log", 1e-2, 0.3),
        "eta": ("log", 0.1, 10.0),
        "epsilon": ("float", 0.0, 0.5),  # nats: the default dev gap is the loss gap
    },
    "optim": {"lr": ("log", 1e-4, 1e-2), "lora_r": ("choice", (4, 8, 16))},
}


def family_style(family: str) -> tuple[str, str]:
    """(colour, marker) of a family; unknown families share one neutral style."""
    return FAMILY_STYLE.get(family, UNKNOWN_STYLE)


SAMPLERS = ("auto", "gp", "tpe", "nsga2", "random")
TRACKERS = ("tensorboard", "mlflow")
