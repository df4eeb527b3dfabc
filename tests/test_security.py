"""No unsafe deserialisation or remote code anywhere a user's files or a hub could reach."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p
    for folder in ("ermgap_ray", "sweeps", "analysis", "benchmarks")
    for p in (ROOT / folder).rglob("*.py")
)
FORBIDDEN = {
    "pickle.load": re.compile(r"\bpickle\.loads?\("),
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
    "weights_only=False": re.compile(r"weights_only\s*=\s*False"),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "yaml.load without SafeLoader": re.compile(r"\byaml\.load\((?![^)]*SafeLoader)"),
}


def test_sources_exist():
    assert len(SOURCES) > 10


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_no_unsafe_loading_pattern(name):
    pattern = FORBIDDEN[name]
    hits = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in SOURCES
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, f"{name} found at {hits}"


def test_torch_load_is_always_weights_only():
    calls = [
        (path, line)
        for path in SOURCES
        for line in path.read_text().splitlines()
        if "torch.load(" in line
    ]
    assert all("weights_only=True" in line for _, line in calls), calls


def test_from_pretrained_never_downloads():
    """Every from_pretrained in the library is pinned to local files (peft's adapter load is
    given a directory that `SERModel.from_adapter` has checked exists)."""
    text = (ROOT / "ermgap_ray" / "model.py").read_text()
    calls = re.findall(r"(\w+)\.from_pretrained\(([^)]*)\)", text, flags=re.S)
    loads = [args for owner, args in calls if owner != "PeftModel"]
    assert len(loads) >= 3 and all("local_files_only=True" in c for c in loads), loads


def test_local_ray_dashboard_is_bound_to_loopback():
    text = (ROOT / "ermgap_ray" / "cluster.py").read_text()
    assert 'dashboard_host="127.0.0.1"' in text


def test_secrets_in_the_environment_never_reach_the_manifest(tmp_path, monkeypatch):
    from ermgap_ray.results import write_manifest

    secrets = {"HF_TOKEN": "hf_s3cr3t", "RAY_AUTH_TOKEN": "tok_s3cr3t", "AWS_SECRET_KEY": "x"}
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    text = write_manifest(tmp_path, {"name": "x"}, cluster={"address": "127.0.0.1:6379"})
    written = text.read_text()
    assert "s3cr3t" not in written and "AWS_SECRET" not in written
