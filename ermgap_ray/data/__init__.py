"""Corpus loading, validation, the synthetic MELD-ST twin and group-stratified sampling.

`synthetic` and `meld_st` load lazily, so `python -m ermgap_ray.data.synthetic` (or `.meld_st`)
does not import its own module twice.
"""

from typing import Any

from ermgap_ray.data.io import (
    data_fingerprint,
    default_cache_root,
    read_manifest,
    resolve_data,
    write_manifest,
)
from ermgap_ray.data.sampler import GroupStratifiedBatchSampler, shard_for_eval
from ermgap_ray.data.validate import (
    DataReport,
    DataValidationError,
    SpeakerOverlapWarning,
    data_summary,
    summarize,
    validate_records,
)

__all__ = [
    "DataReport",
    "DataValidationError",
    "GroupStratifiedBatchSampler",
    "SpeakerOverlapWarning",
    "data_fingerprint",
    "data_summary",
    "default_cache_root",
    "load_gender_table",
    "load_meld_st",
    "make_corpus",
    "read_manifest",
    "resolve_data",
    "shard_for_eval",
    "summarize",
    "validate_records",
    "write_manifest",
]

_LAZY = {
    "make_corpus": "ermgap_ray.data.synthetic",
    "load_meld_st": "ermgap_ray.data.meld_st",
    "load_gender_table": "ermgap_ray.data.meld_st",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
