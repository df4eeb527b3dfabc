"""TrialConfig validation: every bad value is a one-line ConfigError naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ermgap_ray.config import ConfigError, TrialConfig, load_trial_config


@pytest.mark.parametrize(
    ("overrides", "field", "why"),
    [
        (["p=3"], "p", "must be 1 or 2"),
        (["eta=-0.1"], "eta", "must be >= 0"),
        (["epsilon=-0.01"], "epsilon", "must be >= 0"),
        (["lam=-1"], "lam", "must be >= 0"),
        (["lambda_mode=adaptive", "lam=1.0", "lam_max=0.5"], "lam_max", "must be >= lam (1.0)"),
        (["lr=0"], "lr", "must be > 0"),
        (["batch_size=0"], "batch_size", "must be >= 1"),
        (["modality=video"], "modality", "must be one of audio, audio+text"),
    ],
)
def test_out_of_range_values_name_the_field(overrides: list[str], field: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_trial_config(None, overrides)
    message = str(err.value)
    assert message.startswith(f"config field '{field}': {why}") and "\n" not in message


def test_fixed_lambda_ignores_lam_max_and_defaults_are_valid() -> None:
    assert load_trial_config(None, ["lambda_mode=fixed", "lam=5", "lam_max=1"]).lam == 5
    assert TrialConfig.from_dict(TrialConfig().to_dict()) == TrialConfig()


def test_unknown_keys_list_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) lamda; valid keys: .*lam_max"):
        load_trial_config(None, ["lamda=1"])
    yaml_file = tmp_path / "trial.yaml"
    yaml_file.write_text("trial:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) epoch;"):
        load_trial_config(yaml_file)
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_trial_config(None, ["epochs"])
