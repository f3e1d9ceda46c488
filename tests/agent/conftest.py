"""Fixtures for the agent tests: a test profile folder, fleet key pairs, bundles of the reference model,
and a running agent process with an observer client."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agent_helpers import (
    Keys,
    RunningAgent,
    agent_config,
    make_bundle,
    started_agent,
    write_profiles,
)

from edgefleet.contract.profiles import PROFILES_PATH_ENV
from edgefleet.contract.signing import create_key_pair
from edgefleet.fleet.broker import MosquittoProcess


@pytest.fixture(scope="session")
def profiles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_profiles(tmp_path_factory.mktemp("profiles"))


@pytest.fixture(autouse=True)
def _profiles_env(profiles_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROFILES_PATH_ENV, str(profiles_dir))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    private, public = create_key_pair(tmp_path_factory.mktemp("keys"))
    return Keys(private, public)


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    private, public = create_key_pair(tmp_path_factory.mktemp("other-keys"))
    return Keys(private, public)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, keys: Keys, reference_dir: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    return {
        "v1": make_bundle(out / "v1.bundle", reference_dir / "digits_cnn_v1.onnx", keys.private, "1"),
        "v2": make_bundle(out / "v2.bundle", reference_dir / "digits_cnn_v2.onnx", keys.private, "2"),
    }


@pytest.fixture
def running_agent(
    tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path
) -> Iterator[RunningAgent]:
    with started_agent(tmp_path, broker, agent_config(tmp_path, broker.url, keys), profiles_dir) as agent:
        yield agent
