"""Helpers shared by the benchmarks: machine description and markdown output."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED_PDFS = Path(__file__).resolve().parents[1].parent / "shared" / "pdfs"


def run_cold(module: str, variant: str, options: list[str]) -> None:
    """``python -m module --child variant ...options --launched <now>`` in a fresh process with
    empty inductor and Triton caches (a new machine's compile); its output goes to ours."""
    caches = Path(tempfile.mkdtemp(prefix=f"cache-{variant}-"))
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
        "TRITON_CACHE_DIR": str(caches / "triton"),
    }
    command = [sys.executable, "-m", module, "--child", variant, *options]
    print(f"== {variant}", flush=True)
    subprocess.run([*command, "--launched", str(time.time())], env=env, check=False)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024**2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} x {cpu}{mem}, Python {platform.python_version()}"


def header(title: str, module: str) -> str:
    command = " ".join(["uv run python -m", module, *sys.argv[1:]])
    today = dt.date.today().isoformat()
    return f"### {title}\n\n- date: {today}\n- machine: {machine()}\n- command: `{command}`\n"


def table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
