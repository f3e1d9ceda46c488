"""Crash-safety parts in-process: the chunk log (torn entries, lying entries, another chunking), the
ledger (persisted, a damaged file set aside), and what start-up cleans after a crash."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from agent_helpers import TEST_PROFILE, Keys, file_sha256
from support_bundles import chunked_bundle

from edgefleet.agent.delivery import ChunkAssembler
from edgefleet.agent.ledger import Ledger, ProbationRecord, Verdict
from edgefleet.agent.store import BundleStore
from edgefleet.contract.messages import BundleMeta, DesiredState
from edgefleet.contract.signing import load_public_key
from edgefleet.protocol.delivery import ranges

CHUNK = 1000


def _meta(data: bytes, chunk: int = CHUNK) -> BundleMeta:
    _, meta = chunked_bundle(data, chunk, name="m", version="1", profile="p")
    return meta


def test_chunk_log_resume_trusts_nothing_it_does_not_rehash(tmp_path: Path) -> None:
    data = os.urandom(6 * CHUNK)
    meta = _meta(data)
    part, log = tmp_path / "x.part", tmp_path / "x.chunks"
    first = ChunkAssembler(meta, part, log)
    for index in (0, 2, 5):
        assert first.accept(index, data[index * CHUNK : (index + 1) * CHUNK]) is None
    first.close()  # as after kill -9: the part file and the log stay behind
    with log.open("ab") as handle:  # the log claims chunk 3 too (it was never written) and ends torn
        handle.write(struct.pack("<I", 3) + b"\x01\x00")
    with part.open("r+b") as handle:  # and chunk 5 rotted on disk
        handle.seek(5 * CHUNK)
        handle.write(b"\x00" * 10)
    second = ChunkAssembler(meta, part, log)
    assert second.resumed == 2 and second.missing() == [1, 3, 4, 5]
    assert second.missing_ranges() == [(1, 1), (3, 5)]
    for index in second.missing():
        second.accept(index, data[index * CHUNK : (index + 1) * CHUNK])
    assert second.finish().read_bytes() == data


def test_chunk_log_of_another_chunking_falls_back_to_a_full_scan(tmp_path: Path) -> None:
    data = os.urandom(4 * CHUNK)
    part, log = tmp_path / "x.part", tmp_path / "x.chunks"
    first = ChunkAssembler(_meta(data), part, log)
    for index in range(4):
        first.accept(index, data[index * CHUNK : (index + 1) * CHUNK])
    first.close()
    regrouped = ChunkAssembler(_meta(data, chunk=2 * CHUNK), part, log)
    assert regrouped.resumed == 2 and regrouped.complete  # found by hashing, not by the stale log


def test_ranges() -> None:
    assert ranges([]) == []
    assert ranges([7, 0, 1, 2, 5, 8]) == [(0, 2), (5, 5), (7, 8)]


def test_ledger_persists_and_survives_damage(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    desired = DesiredState(deployment_id="d-1", bundle_id="a" * 64, name="m", version="2", profile="p")
    ledger.set_desired(desired)
    ledger.record_activation("b" * 64, "m", "1")
    ledger.record_activation("a" * 64, "m", "2")
    ledger.add_verdict(
        Verdict(deployment_id="d-1", bundle_id="a" * 64, version="2", kind="rolled_back", reason="NaN")
    )
    ledger.set_probation(
        ProbationRecord(
            deployment_id="d-1",
            bundle_id="a" * 64,
            version="2",
            previous_bundle_id="b" * 64,
            previous_version="1",
        )
    )
    again = Ledger(tmp_path)
    assert (
        again.desired == desired and again.probation is not None and again.probation.previous_version == "1"
    )
    assert again.is_failed("a" * 64) and not again.is_failed("b" * 64)
    assert again.verdict_for("d-1", "a" * 64) is not None and again.verdict_for("d-2", "a" * 64) is None
    again.record_activation("a" * 64, "m", "2")  # a new deployment of the same bundle made it active again
    assert not again.is_failed("a" * 64)

    (tmp_path / "deployments.json").write_bytes(b'{"desired": {"deployment_id": 5}')  # torn
    fresh = Ledger(tmp_path)
    assert fresh.desired is None and fresh.data.activations == []
    assert (tmp_path / "deployments.json.damaged").is_file()


def test_start_up_cleanup_keeps_only_the_wanted_delivery(
    tmp_path: Path, keys: Keys, bundles: dict[str, Path]
) -> None:
    store = BundleStore(tmp_path / "state", load_public_key(keys.public), TEST_PROFILE)
    bundle_id = file_sha256(bundles["v1"])
    store.install(bundles["v1"], bundle_id)
    store.set_active(bundle_id)
    staging = store.bundles_dir / f".{'c' * 64}.tmp"  # a crash in the middle of unpacking
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"half")
    (store.state_dir / "active.tmp").write_text("d" * 64)  # a crash in the middle of moving the pointer
    wanted, stale = "e" * 64, "f" * 64
    for name in (wanted, stale):
        store.part_path(name).write_bytes(b"part")
        store.chunk_log_path(name).write_bytes(b"log")
    removed = store.cleanup_at_start(delivery_to_keep=wanted)
    assert not staging.exists() and not (store.state_dir / "active.tmp").exists()
    assert store.part_path(wanted).exists() and store.chunk_log_path(wanted).exists()
    assert not store.part_path(stale).exists() and not store.chunk_log_path(stale).exists()
    assert len(removed) == 4
    assert store.active_id() == bundle_id and store.load_installed(bundle_id).manifest.version == "1"
