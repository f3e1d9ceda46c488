"""Identifier formats of the protocol, each written once: bundle ids and file digests (sha256 hex), and the
topic-safe ids of devices, host clients and deployments."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

SHA256_HEX = r"^[0-9a-f]{64}$"
TOPIC_SAFE_ID = r"^[A-Za-z0-9_-]{1,64}$"  # one MQTT topic level: no '/', '+', '#'

_SHA256 = re.compile(SHA256_HEX)
_TOPIC_SAFE = re.compile(TOPIC_SAFE_ID)

Sha256Hex = Annotated[str, Field(pattern=SHA256_HEX)]
TopicSafeId = Annotated[str, Field(pattern=TOPIC_SAFE_ID)]


def is_sha256_hex(text: str) -> bool:
    return _SHA256.match(text) is not None


def is_topic_safe_id(text: str) -> bool:
    return _TOPIC_SAFE.match(text) is not None


def check_device_id(device_id: str) -> str:
    """Device and host client ids: 1-64 characters from A-Z a-z 0-9 _ - (ValueError otherwise)."""
    if not is_topic_safe_id(device_id):
        raise ValueError(f"device id {device_id!r} is not valid: use 1-64 characters from A-Z a-z 0-9 _ -")
    return device_id


def check_bundle_id(bundle_id: str) -> str:
    if not is_sha256_hex(bundle_id):
        raise ValueError(f"bundle id {bundle_id!r} is not a sha256 hex digest")
    return bundle_id
