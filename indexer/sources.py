"""Finding the files to ingest: paths and globs, sharding across machines, metadata sidecars,
content hashes."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.errors import ConfigurationError, InvalidDocument, InvalidInput
from retrieval.store.filters import check_metadata

DEFAULT_GLOBS = ("*.pdf",)


def default_globs() -> list[str]:
    """What ``colqwen ingest DIR`` picks up: PDFs, and office and OpenDocument files where
    LibreOffice is installed to convert them (``indexer.convert``)."""
    from indexer import convert

    office = [f"*{suffix}" for suffix in convert.SUFFIXES] if convert.installed() else []
    return [*DEFAULT_GLOBS, *office]


@dataclass
class SourceFile:
    """A file to ingest, with the metadata it will carry."""

    path: Path
    name: str  # what search results call it: the path relative to the input root
    metadata: dict[str, Any] = field(default_factory=dict)
    password: str | None = None
    password_sealed: str | None = None  # the same, sealed: what the document record keeps


def discover(
    paths: Iterable[Path], *, globs: Iterable[str] = DEFAULT_GLOBS, recursive: bool = False
) -> list[SourceFile]:
    """Files named directly, plus those matching ``globs`` in directories (case-insensitive:
    ``*.pdf`` finds ``REPORT.PDF``); sorted, unique. Hidden files are skipped; a link to
    nothing is kept (its ingestion fails and says why)."""
    patterns = [g.lower() for g in globs]
    found: dict[Path, SourceFile] = {}
    for root in paths:
        root = Path(root)
        if root.is_file():
            found.setdefault(root.resolve(), SourceFile(root, root.name))
        elif root.is_dir():
            for match in root.rglob("*") if recursive else root.iterdir():
                name = match.relative_to(root).as_posix()
                if _wanted(match, patterns) and not any(p.startswith(".") for p in name.split("/")):
                    found.setdefault(match.resolve(), SourceFile(match, name))
        else:
            raise InvalidInput(f"{root}: no such file or directory")
    return sorted(found.values(), key=lambda s: s.name)


def count_pages(sources: Iterable[SourceFile], *, enough: int, cap: int | None = None) -> int:
    """The pages of ``sources`` (each capped at ``cap``), counted until ``enough``: a PDF's
    from its page tree (milliseconds), any other file as one page (an image is; an office file
    or a PDF that cannot be opened without its password may be more)."""
    import pypdfium2 as pdfium

    total = 0
    for source in sources:
        pages = 1
        if source.path.suffix.lower() == ".pdf":
            try:
                with pdfium.PdfDocument(source.path, password=source.password) as pdf:
                    pages = len(pdf)
            except (pdfium.PdfiumError, OSError):
                pages = 1
        total += min(pages, cap) if cap else pages
        if total >= enough:
            break
    return total


def _wanted(path: Path, patterns: list[str]) -> bool:
    """A file matching ``patterns``; a link to nothing too, so that it is reported as a
    failed file (with its reason) rather than skipped without a word."""
    dangling = path.is_symlink() and not path.exists()
    named = any(fnmatch.fnmatchcase(path.name.lower(), p) for p in patterns)
    return named and (path.is_file() or dangling)


def nothing_found_hint(
    paths: Iterable[Path], *, globs: Iterable[str] = DEFAULT_GLOBS, recursive: bool = False
) -> str:
    """Why ``discover`` found nothing, and what to do about it."""
    looked = ", ".join(globs)
    where = ", ".join(str(p) for p in paths)
    hint = f"no files matching {looked} in {where}"
    if not recursive:
        deeper = len(discover(paths, globs=globs, recursive=True))
        if deeper:
            return f"{hint}, but {deeper} in subfolders: add -r (--recursive) to ingest them"
    return f"{hint}: point at PDFs (or folders of them), or pass --glob for other names"


def parse_shard(spec: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigurationError(f"bad shard '{spec}': use I/N, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigurationError(f"bad shard '{spec}': need 0 <= I < N")
    return index, count


def in_shard(source: SourceFile, index: int, count: int) -> bool:
    """Deterministic by the file's name under its input root: the same split on every machine
    that sees the same tree, whatever its mount point."""
    digest = hashlib.sha1(source.name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count == index


def sidecar_metadata(path: Path) -> dict[str, Any]:
    """Metadata from ``FILE.json`` (e.g. report.pdf.json) or ``STEM.json`` beside the file."""
    for candidate in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if candidate.is_file() and candidate != path:
            try:
                data = json.loads(candidate.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InvalidDocument(
                    f"{candidate}: metadata sidecar is not valid JSON ({exc})"
                ) from None
            return check_metadata(data, where=f"{candidate} (metadata sidecar)")
    return {}


def parse_meta(pairs: Iterable[str]) -> dict[str, Any]:
    """['team=finance', 'year=2024'] -> {'team': 'finance', 'year': 2024} (JSON values parsed)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"bad --meta '{pair}': use key=value")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return check_metadata(out, where="--meta")


def sha256_file(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """(hex digest, size in bytes), streamed."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def iter_shard(sources: list[SourceFile], shard: tuple[int, int] | None) -> Iterator[SourceFile]:
    for source in sources:
        if shard is None or in_shard(source, *shard):
            yield source
