"""Errors of the host-side fleet commands; each message says what went wrong and what to do."""

from __future__ import annotations

from edgefleet.contract.errors import EdgefleetError


class DeployError(EdgefleetError):
    """A deployment could not be made or did not complete."""


class ProfileMismatch(DeployError):
    """The bundle was built for another profile than the device reports."""


class DeploymentRejected(DeployError):
    """The device refused the bundle; `detail` is the device's reason."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class DeploymentTimeout(DeployError):
    """The device did not report the bundle active in time; `last_seen` says what it did report."""

    def __init__(self, message: str, last_seen: str) -> None:
        super().__init__(message)
        self.last_seen = last_seen


class InferenceError(EdgefleetError):
    """An inference request failed; `detail` is the device's error reply (or why there was none)."""

    def __init__(self, device_id: str, detail: str) -> None:
        super().__init__(f"device {device_id}: inference failed: {detail}")
        self.device_id = device_id
        self.detail = detail


class InferenceTimeout(InferenceError):
    """No reply arrived in time."""
