"""The agent's chunk store for a delivery (edgefleet.protocol.delivery drives it): the bundle file
reassembled from its retained chunks, per-chunk sha256, writes at each chunk's offset into a part file,
resume from a part file left by an earlier run, and the whole-file check at the end.

Next to the part file, a chunk log records the index of every chunk written after it passed its hash.
After a crash the log says which chunks to look at, and each of them is hashed again before it counts:
the log saves hashing the holes, it is never trusted on its own.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from edgefleet.contract.errors import BundleError
from edgefleet.contract.messages import BundleMeta
from edgefleet.protocol.delivery import ranges

_LOG_MAGIC = b"EFCL"
_LOG_HEADER = struct.Struct("<4sQ")  # magic, chunk size (a log of another chunking is worthless)
_LOG_ENTRY = struct.Struct("<I")


class ChunkAssembler:
    """Collects the chunks of one bundle into `part_path`; chunks may arrive in any order, more than once."""

    def __init__(self, meta: BundleMeta, part_path: Path, log_path: Path | None = None) -> None:
        self.meta = meta
        self.part_path = part_path
        self.log_path = log_path
        self.total = len(meta.chunk_sha256)
        self.received: set[int] = set()
        self.file_sha256: str | None = None  # the whole file's digest, once `finish` computed it
        part_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(part_path, os.O_RDWR | os.O_CREAT, 0o600)
        self._fd: int | None = fd
        self._log_fd: int | None = None
        existed = os.fstat(fd).st_size > 0
        if os.fstat(fd).st_size != meta.size:
            os.ftruncate(fd, meta.size)
        self.resumed = self._scan_existing(self._logged_chunks() if existed else set())
        self._open_log()

    def _logged_chunks(self) -> set[int] | None:
        """Chunk indices the log names (a torn last entry is ignored); None: no usable log, scan all."""
        if self.log_path is None:
            return None
        try:
            raw = self.log_path.read_bytes()
        except OSError:
            return None
        if len(raw) < _LOG_HEADER.size:
            return None
        magic, chunk_size = _LOG_HEADER.unpack_from(raw)
        if magic != _LOG_MAGIC or chunk_size != self.meta.chunk_size:
            return None
        body = raw[_LOG_HEADER.size :]
        usable = len(body) - len(body) % _LOG_ENTRY.size
        return {i for (i,) in _LOG_ENTRY.iter_unpack(body[:usable]) if i < self.total}

    def _open_log(self) -> None:
        """Rewrite the log with what the scan verified, then append to it as chunks arrive."""
        if self.log_path is None:
            return
        data = _LOG_HEADER.pack(_LOG_MAGIC, self.meta.chunk_size) + b"".join(
            _LOG_ENTRY.pack(i) for i in sorted(self.received)
        )
        tmp = self.log_path.with_name(self.log_path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.log_path)
        self._log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND)

    def _chunk_range(self, index: int) -> tuple[int, int]:
        start = index * self.meta.chunk_size
        return start, min(start + self.meta.chunk_size, self.meta.size)

    def _scan_existing(self, candidates: set[int] | None) -> int:
        """Chunks already in the part file from an earlier run count as received when their hashes match;
        `candidates` limits the scan to what the chunk log names (None: every chunk)."""
        assert self._fd is not None
        for index in sorted(candidates) if candidates is not None else range(self.total):
            start, end = self._chunk_range(index)
            data = os.pread(self._fd, end - start, start)
            if hashlib.sha256(data).hexdigest() == self.meta.chunk_sha256[index]:
                self.received.add(index)
        return len(self.received)

    def accept(self, index: int, data: bytes) -> str | None:
        """Store chunk `index`; returns None when it was good, else why it was dropped."""
        if self._fd is None:
            return "delivery is closed"
        if not 0 <= index < self.total:
            return f"chunk {index} is out of range (the bundle has {self.total} chunks)"
        if index in self.received:
            return None
        start, end = self._chunk_range(index)
        if len(data) != end - start:
            return f"chunk {index} has {len(data)} bytes, expected {end - start}"
        if hashlib.sha256(data).hexdigest() != self.meta.chunk_sha256[index]:
            return f"chunk {index} does not match its sha256 in the bundle meta"
        os.pwrite(self._fd, data, start)
        self.received.add(index)
        if self._log_fd is not None:  # after the data: a logged chunk has always been written
            os.write(self._log_fd, _LOG_ENTRY.pack(index))
        return None

    @property
    def complete(self) -> bool:
        return len(self.received) == self.total

    def missing(self) -> list[int]:
        return [i for i in range(self.total) if i not in self.received]

    def missing_ranges(self) -> list[tuple[int, int]]:
        return ranges(self.missing())

    def finish(self) -> Path:
        """fsync and check the whole file against the bundle id; returns the part file's path.

        The digest stays in `file_sha256` so BundleStore.install need not hash the file again."""
        if not self.complete:
            raise BundleError(f"bundle {self.meta.bundle_id[:12]}: chunks {self.missing()[:10]} are missing")
        assert self._fd is not None
        os.fsync(self._fd)
        self.close()
        digest = hashlib.sha256()
        with self.part_path.open("rb") as handle:
            while block := handle.read(1024 * 1024):
                digest.update(block)
        self.file_sha256 = digest.hexdigest()
        if self.file_sha256 != self.meta.bundle_id:
            raise BundleError(
                f"bundle {self.meta.bundle_id[:12]}: every chunk matched the meta but the file does not hash "
                "to the bundle id; the bundle meta is wrong - redeploy the bundle"
            )
        return self.part_path

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
