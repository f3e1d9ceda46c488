"""Short human-readable descriptions of device state, shared by `deploy` and `status` output."""

from __future__ import annotations

from edgefleet.contract.messages import ActiveModel, BackendInfo, DeviceEvent, DeviceStatus


def describe_model(model: ActiveModel | None) -> str:
    if model is None:
        return "no model"
    return f"{model.name} {model.version} ({model.format}/{model.precision})"


def describe_backend(backend: BackendInfo | None, *, with_fallbacks: bool = True) -> str:
    if backend is None:
        return "-"
    parts = [f"{backend.engine} {backend.engine_version}"]
    if backend.delegate:
        parts.append(f"delegate {backend.delegate}")
    if backend.providers:
        parts.append("providers " + ",".join(backend.providers))
    parts.append(f"{backend.threads} thread{'s' if backend.threads != 1 else ''}")
    text = ", ".join(parts)
    if with_fallbacks and backend.fallbacks:
        text += "; fallback: " + "; ".join(backend.fallbacks)
    return text


def describe_status(status: DeviceStatus) -> str:
    text = f"state {status.state}, {describe_model(status.model)}"
    if status.last_error:
        text += f", last error: {status.last_error}"
    return text


def describe_event(event: DeviceEvent) -> str:
    text: str = event.kind
    if event.chunks_total:
        text += f" {event.chunks_received or 0}/{event.chunks_total} chunks"
    if event.detail:
        text += f" ({event.detail})"
    return text
