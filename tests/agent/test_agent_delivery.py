"""ChunkAssembler: per-chunk hashes, any order, duplicates, resume from a part file, whole-file check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support_bundles import chunked_bundle

from edgefleet.agent.delivery import ChunkAssembler
from edgefleet.contract.errors import BundleError
from edgefleet.contract.messages import BundleMeta
from edgefleet.protocol.delivery import check_meta

CHUNK = 1000


def _meta(data: bytes, bundle_id: str | None = None) -> BundleMeta:
    _, meta = chunked_bundle(data, CHUNK, name="m", version="1", profile="p")
    return BundleMeta(**{**meta.model_dump(), "bundle_id": bundle_id}) if bundle_id else meta


def _chunks(data: bytes) -> list[bytes]:
    chunks, _ = chunked_bundle(data, CHUNK, name="m", version="1", profile="p")
    return chunks


def test_assembles_out_of_order_with_duplicates_and_bad_chunks(tmp_path: Path) -> None:
    data = os.urandom(4500)
    meta = _meta(data)
    check_meta(meta, meta.bundle_id)
    assembler = ChunkAssembler(meta, tmp_path / "x.part")
    chunks = _chunks(data)
    assert assembler.total == 5 and assembler.resumed == 0
    assert assembler.accept(4, chunks[4]) is None
    assert "does not match its sha256" in (assembler.accept(2, b"\x00" + chunks[2][1:]) or "")
    assert "has 10 bytes, expected 1000" in (assembler.accept(1, b"0123456789") or "")
    assert "out of range" in (assembler.accept(9, chunks[0]) or "")
    for index in (0, 2, 2, 1, 3):
        assert assembler.accept(index, chunks[index]) is None
    assert assembler.complete
    assert assembler.finish().read_bytes() == data


def test_resumes_from_an_existing_part_file(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 10)
    meta, chunks = _meta(data), _chunks(data)
    first = ChunkAssembler(meta, tmp_path / "x.part")
    first.accept(0, chunks[0])
    first.accept(3, chunks[3])
    first.close()
    second = ChunkAssembler(meta, tmp_path / "x.part")
    assert second.resumed == 2 and second.missing() == [1, 2]
    second.accept(1, chunks[1])
    second.accept(2, chunks[2])
    assert second.finish().read_bytes() == data


def test_whole_file_mismatch_and_incomplete(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK)
    meta = _meta(data, bundle_id="f" * 64)
    assembler = ChunkAssembler(meta, tmp_path / "x.part")
    with pytest.raises(BundleError, match="missing"):
        assembler.finish()
    for index, chunk in enumerate(_chunks(data)):
        assembler.accept(index, chunk)
    with pytest.raises(BundleError, match="does not hash to the bundle id"):
        assembler.finish()


def test_check_meta_refuses_inconsistent_meta() -> None:
    meta = _meta(os.urandom(2500))
    with pytest.raises(BundleError, match="expected"):
        check_meta(meta, "e" * 64)
    short = meta.model_copy(update={"chunk_sha256": meta.chunk_sha256[:2]})
    with pytest.raises(BundleError, match="lists 2 chunk hashes"):
        check_meta(short, meta.bundle_id)
    upper = meta.model_copy(update={"chunk_sha256": [h.upper() for h in meta.chunk_sha256]})
    with pytest.raises(BundleError, match="not a lowercase sha256"):
        check_meta(upper, meta.bundle_id)
