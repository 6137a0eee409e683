"""Office and OpenDocument files (Word, PowerPoint, Excel, OpenDocument, RTF, HTML) turned into
PDF by LibreOffice, headless, then rendered like any PDF.

Each conversion runs ``soffice`` in a child process of its own, in a session of its own, with a
profile and a folder of its own (conversions run side by side in the render processes), a
time limit and a memory limit: a hostile or endless file fails that file, not the worker, and
leaves nothing behind. Without LibreOffice installed these formats are refused with a message
that says what to install.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from retrieval.errors import InvalidDocument, UnsupportedFormat

# What LibreOffice converts, by the suffix users know them by.
SUFFIXES = (
    ".docx", ".doc", ".odt", ".rtf",
    ".pptx", ".ppt", ".odp",
    ".xlsx", ".xls", ".ods",
    ".html", ".htm",
)  # fmt: skip
TIMEOUT_S = 120.0  # one document's conversion
MEMORY_MB = 4096  # address space of the converting process
INSTALL = (
    "install LibreOffice to ingest Word, PowerPoint, Excel, OpenDocument, RTF and HTML files "
    "(Debian: apt-get install libreoffice-writer-nogui libreoffice-calc-nogui "
    "libreoffice-impress-nogui), or convert them to PDF first"
)
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MARKERS = (
    b"[Content_Types].xml",  # Office Open XML
    b"mimetypeapplication/vnd.oasis.opendocument",  # OpenDocument
    b"word/",
    b"ppt/",
    b"xl/",
)


def is_office(head: bytes) -> bool:
    """Whether a file's first bytes are those of a format LibreOffice converts."""
    if head.startswith(b"PK\x03\x04"):
        return any(marker in head for marker in _ZIP_MARKERS)
    if head.startswith(_OLE2) or head.startswith(b"{\\rtf"):
        return True
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith((b"<!doctype html", b"<html"))


@functools.cache
def soffice() -> str | None:
    """LibreOffice's program: ``soffice.bin`` itself where it can be found beside the
    ``soffice`` script (run directly it is our own child, reaped when it ends or is killed,
    rather than a grandchild left to init), else the script."""
    found = shutil.which("soffice") or shutil.which("libreoffice")
    if found is None:
        return None
    binary = Path(found).resolve().with_name("soffice.bin")
    return str(binary) if binary.is_file() else found


def installed() -> bool:
    return soffice() is not None


def to_pdf(
    source: Path | bytes,
    name: str,
    *,
    timeout_s: float = TIMEOUT_S,
    memory_mb: int = MEMORY_MB,
) -> bytes:
    """The PDF LibreOffice makes of ``source`` (named ``name``: its suffix tells LibreOffice
    what it is). Raises ``UnsupportedFormat`` without LibreOffice, ``InvalidDocument`` for a
    file it cannot convert, in time or at all."""
    program = soffice()
    if program is None:
        raise UnsupportedFormat(f"{name}: {INSTALL}")
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIXES:
        suffix = ".docx" if isinstance(source, bytes) and source[:2] == b"PK" else ".doc"
    with tempfile.TemporaryDirectory(prefix="colqwen-convert-") as folder:
        work = Path(folder)
        document = work / f"document{suffix}"
        if isinstance(source, bytes):
            document.write_bytes(source)
        else:
            shutil.copyfile(source, document)
        command = [
            program,
            f"-env:UserInstallation={(work / 'profile').as_uri()}",
            "--headless",
            "--norestore",
            "--nologo",
            "--nodefault",
            "--nolockcheck",
            "--convert-to",
            "pdf",
            "--outdir",
            str(work / "out"),
            str(document),
        ]
        deadline = time.monotonic() + timeout_s
        while True:
            returncode, output = _run(command, work, memory_mb, deadline - time.monotonic())
            if returncode is None:
                raise InvalidDocument(
                    f"{name}: converting it to PDF took longer than {timeout_s:g} s; the file "
                    "may be damaged or far too large: convert it to PDF yourself and ingest that"
                )
            if returncode != _RESTART:  # the first start in a new profile asks for a restart
                break
        pdf = work / "out" / "document.pdf"
        if returncode != 0 or not pdf.is_file() or pdf.stat().st_size == 0:
            said = output.decode(errors="replace").strip().splitlines()
            reason = said[-1] if said else f"exit code {returncode}"
            raise InvalidDocument(
                f"{name}: LibreOffice cannot convert it to PDF ({reason}); the file may be "
                "damaged or not what its name says"
            )
        return pdf.read_bytes()


_RESTART = 81  # soffice.bin's exit code for "start me again" (what its launcher does)


def _run(
    command: list[str], work: Path, memory_mb: int, timeout_s: float
) -> tuple[int | None, bytes]:
    """Run ``command`` to its end: (exit code, what it printed); (None, ...) if it ran past
    ``timeout_s`` and was killed, with all it started."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its helpers are killed with it
        preexec_fn=functools.partial(_limit_memory, memory_mb),
        cwd=work,
    )
    try:
        output, _ = process.communicate(timeout=max(timeout_s, 0.01))
    except subprocess.TimeoutExpired:
        return None, b""
    finally:
        _kill(process)
    return process.returncode, output


def _limit_memory(megabytes: int) -> None:
    """In the child: at most ``megabytes`` of address space (or the limit it inherited, a
    render process's, if that is lower: a limit can be lowered, never raised)."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = megabytes << 20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _kill(process: subprocess.Popen) -> None:
    """Stop the conversion and whatever it started (its process group), and wait until none
    of them runs any more (killed orphans are left to init to reap: zombies do not count)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _running_in_group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _running_in_group(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (Linux's /proc; elsewhere: no)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            return True
    return False
