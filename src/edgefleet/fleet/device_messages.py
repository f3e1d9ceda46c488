"""Parsing what devices publish (presence, status, telemetry, events): a malformed message becomes an
`InvalidDeviceMessage` with a short reason, never an exception that escapes to the user.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from edgefleet.contract.errors import first_validation_error
from edgefleet.contract.messages import DeviceEvent, DeviceStatus, Message, Presence, Telemetry

SCHEMAS: dict[str, type[Message]] = {
    "online": Presence,
    "status": DeviceStatus,
    "telemetry": Telemetry,
    "events": DeviceEvent,
}


class InvalidDeviceMessage(ValueError):
    """A device published something that is not a valid message of its topic."""


def parse_device_message(leaf: str, payload: bytes) -> Message | None:
    """The message for topic leaf `leaf`; None for an empty payload (a cleared retained message)."""
    schema = SCHEMAS.get(leaf)
    if schema is None:
        raise InvalidDeviceMessage(f"unknown topic leaf {leaf!r}")
    if not payload:
        return None
    preview = payload[:40].decode("utf-8", "replace")
    try:
        data = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidDeviceMessage(f"not valid JSON (not UTF-8 text): {preview!r}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidDeviceMessage(f"not valid JSON ({exc.msg} at byte {exc.pos}): {preview!r}") from exc
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problem = first_validation_error(exc, "message")
        raise InvalidDeviceMessage(f"not a valid {schema.__name__}: {problem}") from exc
