"""Anti-rollback: a signed minimum version of a model for one device. The host signs it with the fleet
key (the one bundles are signed with) and publishes it retained on the device's `floor` topic; an agent
with `anti_rollback` on refuses to activate a bundle of that model below it, whoever asks.

The floor is bound to its device (a floor copied to another device's topic does not verify there) and
carries when it was issued: a device keeps the newest floor it has verified, so replaying an older, lower
floor changes nothing. Lowering a floor takes a newly signed one.
"""

from __future__ import annotations

import re
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.contract.errors import BundleError, EdgefleetError
from edgefleet.contract.ids import TopicSafeId
from edgefleet.contract.messages import Message, utc_now
from edgefleet.contract.signing import sign, verify


class FloorError(EdgefleetError):
    """A floor message that does not verify or does not apply to this device."""


class VersionFloor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: TopicSafeId
    model: str = Field(min_length=1, description="the model name bundles carry in their manifest")
    min_version: str | None = Field(description="bundles of `model` below this are refused; null: no floor")
    issued_at: datetime = Field(default_factory=utc_now)


class SignedFloor(Message):
    """The wire form: the floor's exact JSON (what was signed) and the signature record."""

    floor: str
    signature: dict[str, str]


def sign_floor(private_key: Ed25519PrivateKey, floor: VersionFloor) -> bytes:
    text = floor.model_dump_json()
    return SignedFloor(floor=text, signature=sign(private_key, text.encode())).to_bytes()


def verify_floor(public_key: Ed25519PublicKey, payload: bytes, device_id: str) -> VersionFloor:
    """The floor in `payload` if the fleet key signed it for `device_id`; FloorError otherwise."""
    try:
        signed = SignedFloor.model_validate_json(payload)
        verify(public_key, signed.floor.encode(), signed.signature, what="version floor")
        floor = VersionFloor.model_validate_json(signed.floor)
    except (ValidationError, ValueError) as exc:
        raise FloorError(f"not a signed version floor ({str(exc).splitlines()[0]})") from exc
    except BundleError as exc:
        raise FloorError(str(exc)) from exc
    if floor.device_id != device_id:
        raise FloorError(f"the version floor is for device {floor.device_id!r}, not {device_id!r}")
    return floor


_PART = re.compile(r"\d+|[A-Za-z]+")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order of version strings: "2" < "10", "1.2" < "1.10", "1.0" < "1.0.1"; numbers compare as
    numbers, words as text, and a number ranks above a word at the same place ("1.0rc1" < "1.0.1")."""
    return tuple((1, int(p)) if p.isdigit() else (0, p.lower()) for p in _PART.findall(version))


def below(version: str, floor: str) -> bool:
    return version_key(version) < version_key(floor)
