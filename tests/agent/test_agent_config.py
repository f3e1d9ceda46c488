"""The agent config file: validation errors a user can act on, relative paths, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.config import ConfigError, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_valid_config_with_defaults_and_relative_paths(tmp_path: Path) -> None:
    text = (
        "device_id: pi-1\nprofile: rpi4\nbroker: mqtt://10.0.0.2\n"
        "state_dir: state\ntrusted_key: keys/fleet.pub\ntags: {room: kitchen}\n"
    )
    config = load_config(_write(tmp_path, text))
    assert config.telemetry_interval_s == 5.0
    assert config.state_dir == tmp_path / "state" and config.trusted_key == tmp_path / "keys/fleet.pub"
    assert config.broker_address.port == 1883 and config.tags == {"room": "kitchen"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("device_id: 'a b'\nprofile: p\nbroker: x\nstate_dir: s\ntrusted_key: k\n", "device_id"),
        ("device_id: a\nprofile: p\nbroker: 'http://x'\nstate_dir: s\ntrusted_key: k\n", "broker"),
        (
            "device_id: a\nprofile: p\nbroker: x\nstate_dir: s\ntrusted_key: k\ncolour: red\n",
            "unknown key 'colour'$",
        ),
        (
            "device_id: a\nprofile: p\nbroker: x\nstate_dir: s\ntrusted_key: k\nkeep_bundle: 2\n",
            r"unknown key 'keep_bundle' \(did you mean 'keep_bundles'\?\)",
        ),
        ("device_id: a\nprofile: p\nbroker: x\nstate_dir: s\n", "'trusted_key' is required"),
        ("device_id: a\nprofile: p\n  broker: x\n", "not valid YAML: line 3, column 9: mapping values"),
        (
            "device_id: a\nprofile: p\nbroker: x\nstate_dir: s\ntrusted_key: k\ntelemetry_interval_s: 0\n",
            "telemetry",
        ),
        ("- just a list\n", "mapping"),
    ],
)
def test_invalid_configs_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path / "nope.yaml")
