"""Uploaded originals on disk: content-addressed, private, and never half-written.

An upload streams into ``uploads/tmp/<random>.part`` (under the data directory, mode 0600)
while it is hashed and its type sniffed; only a complete, accepted file is renamed to
``uploads/<sha256>.pdf`` (or ``.img``, ``.office``), so the same bytes always land on the same
file and a crash leaves at most a ``.part`` that the next start removes.

In a distributed deployment the originals are kept in the database (``shared``:
``indexer.originals``) and this folder is each host's copy of those it wrote or read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer import convert
from indexer.render import UNSUPPORTED, sniff
from retrieval.errors import InvalidInput, UnsupportedFormat, UploadTooLarge

if TYPE_CHECKING:
    from indexer.originals import PostgresOriginals

log = logging.getLogger(__name__)

_SUFFIX = {"pdf": ".pdf", "image": ".img", "office": ".office"}  # by what the bytes are
_SUFFIXES = tuple(_SUFFIX.values())
_CONTENT_ADDRESS = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredUpload:
    path: Path
    doc_id: str  # sha256 of the bytes
    size: int


class UploadFolder:
    """The originals of uploads, by content hash. ``shared``: where they are kept for every
    host (the database); this folder then holds this host's copies."""

    def __init__(self, root: Path, shared: PostgresOriginals | None = None) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.shared = shared

    def incoming(self, name: str, limit_bytes: int) -> IncomingFile:
        """A new upload of ``name`` to write block by block."""
        self.tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        return IncomingFile(self, name, limit_bytes)

    def _local(self, doc_id: str) -> Path | None:
        for suffix in _SUFFIXES:
            path = self.root / f"{doc_id}{suffix}"
            if path.is_file():
                return path
        return None

    def path_of(self, doc_id: str) -> Path | None:
        """The original's file on this host (fetched from ``shared`` the first time), or None
        if it is not kept."""
        local = self._local(doc_id)
        if self.shared is None:
            return local
        if not self.shared.has(doc_id):
            if local is not None:
                local.unlink(missing_ok=True)  # a copy of an original removed through another host
            return None
        if local is not None:
            return local
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.shared.fetch(doc_id, self.root)

    def has(self, doc_id: str) -> bool:
        """Whether the original of ``doc_id`` is kept (without fetching it)."""
        if self.shared is not None:
            return self.shared.has(doc_id)
        return self._local(doc_id) is not None

    def keep(self, doc_id: str, path: Path) -> None:
        """Make a committed upload readable by every host (a no-op without ``shared``)."""
        if self.shared is not None:
            self.shared.put(doc_id, path)

    def doc_ids(self) -> list[str]:
        """The documents whose originals are kept."""
        if self.shared is not None:
            return self.shared.doc_ids()
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.iterdir() if p.suffix in _SUFFIXES and p.is_file())

    def holds(self, path: str | Path | None) -> bool:
        """Whether ``path`` is a kept original (not a user's own file): in this folder, or,
        with ``shared``, in the uploads folder of whichever host accepted it."""
        if not path:
            return False
        path = Path(path)
        if path.suffix not in _SUFFIXES:
            return False
        if self.shared is not None:
            return path.parent.name == self.root.name and bool(
                _CONTENT_ADDRESS.fullmatch(path.stem)
            )
        return path.resolve().parent == self.root.resolve()

    def remove(self, doc_id: str) -> bool:
        removed = False
        for suffix in _SUFFIXES:
            path = self.root / f"{doc_id}{suffix}"
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                pass
        if self.shared is not None:
            removed = self.shared.remove(doc_id) or removed
        return removed

    def prune_copies(self) -> int:
        """Remove this host's copies of originals no longer kept in ``shared`` (their documents
        were deleted through another host)."""
        if self.shared is None or not self.root.is_dir():
            return 0
        kept = set(self.shared.doc_ids())
        stale = [p for p in self.root.iterdir() if p.suffix in _SUFFIXES and p.stem not in kept]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def clean_partial(self, older_than_s: float = 0.0) -> int:
        """Remove ``.part`` files left by a process that died mid-upload."""
        if not self.tmp.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for part in self.tmp.glob("*.part"):
            try:
                if part.stat().st_mtime <= cutoff:
                    part.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        if removed:
            log.info("removed %d partial uploads left by an interrupted process", removed)
        return removed


class IncomingFile:
    """One upload being written: ``write`` blocks, then ``commit`` or ``discard``."""

    def __init__(self, folder: UploadFolder, name: str, limit_bytes: int) -> None:
        self.folder = folder
        self.name = name
        self.limit = limit_bytes
        self.size = 0
        self._head = b""
        self._digest = hashlib.sha256()
        self._path = folder.tmp / f"{uuid.uuid4().hex}.part"
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb")

    def write(self, block: bytes) -> None:
        self.size += len(block)
        if self.size > self.limit:
            self.discard()
            raise UploadTooLarge(
                f"{self.name}: larger than the {self.limit / 2**20:g} MB upload limit"
            )
        if len(self._head) < 1024:
            self._head += block[: 1024 - len(self._head)]
        self._digest.update(block)
        self._file.write(block)

    def commit(self) -> StoredUpload:
        """Check and keep the file under its content address; discarded if it is refused."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if self.size == 0:
                raise InvalidInput(f"{self.name}: the file is empty")
            kind = sniff(self._head)
            if kind is None:
                raise UnsupportedFormat(f"{self.name}: {UNSUPPORTED}")
            if kind == "office" and not convert.installed():
                raise UnsupportedFormat(f"{self.name}: {convert.INSTALL}")
            doc_id = self._digest.hexdigest()
            final = self.folder.root / f"{doc_id}{_SUFFIX[kind]}"
            os.replace(self._path, final)  # the same bytes land on the same file
            self.folder.keep(doc_id, final)
            return StoredUpload(final, doc_id, self.size)
        finally:
            self.discard()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)
