"""A GPU worker's start, end to end: ``colqwen ingest`` in a fresh process, from its launch to
its exit, with empty compile caches (a new machine) or with the compile cache's files that an
earlier run left (a fresh container on a volume the workers share).

    python -m bench.startup_bench --checkpoint /tmp/ckpt [--old .old] [--scenarios ...]

A full-size ColQwen2 checkpoint with random weights is written once to ``--checkpoint`` (4.4
GB; random weights cost what real ones do). Each scenario runs the real command line with
its own data directory, inductor and Triton cache directories, on the good PDFs of
``../shared/pdfs`` (or ``--pdfs``): a set of ~200 pages, or the set fed 12 times (4,452
pages, each copy its own document). ``--old DIR``: a checkout of the code before issue 34
(``git archive 3ee8e11``), the baseline, run the same way. Per run: wall seconds from launch
to exit, the first page stored (seconds since launch), pages/s over the run's own clock (from
the model ready to the last page stored) and over the wall, and the command's status lines.

Scenarios: ``old-eager-200`` ``old-compiled-200`` (today's compiled: the warm-up before the
first page) ``new-200`` (defaults: a small run is not compiled) ``new-handover-200`` (compile
forced on: the handover starts and the run ends before it) ``new-cold-4452`` (no caches)
``new-cached-4452`` (the compile cache the cold run wrote, fresh inductor caches)
``old-eager-4452``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import SHARED_PDFS

ROOT = Path(__file__).resolve().parent.parent


def write_checkpoint(out: Path, device: str) -> float:
    """The full-size ColQwen2 architecture with random weights, saved as a checkpoint."""
    from bench.full_size import colqwen2

    start = time.perf_counter()
    model, processor = colqwen2(device)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return time.perf_counter() - start


def corpus(files: list[Path], pages: int | None, repeat: int) -> tuple[Path, int]:
    """A folder of copies of ``files`` (each its own document): the first ones up to
    ``pages`` pages, or all of them ``repeat`` times. Returns it and its page count."""
    import pypdfium2 as pdfium

    folder = Path(tempfile.mkdtemp(prefix="corpus-"))
    total = 0
    for i, f in enumerate(files * repeat):
        if pages is not None and total >= pages:
            break
        (folder / f"{i:04d}-{f.name}").write_bytes(f.read_bytes() + f"\n%{i}\n".encode())
        with pdfium.PdfDocument(f) as pdf:
            total += len(pdf)
    return folder, total


def run(name: str, code: Path, folder: Path, env: dict[str, str]) -> dict:
    data = Path(tempfile.mkdtemp(prefix=f"data-{name}-"))
    env = {
        **os.environ,
        "PYTHONPATH": f"{code}:{os.environ.get('PYTHONPATH', '')}",
        "COLQWEN_DATA_DIR": str(data),
        "TORCHINDUCTOR_CACHE_DIR": str(data / "inductor"),
        "TRITON_CACHE_DIR": str(data / "triton"),
        "COLQWEN_BATCH_SIZE": "32",
        "COLQWEN_OCR": "off",
        **env,
    }
    report = data / "report.json"
    command = [sys.executable, "-m", "app.cli", "ingest", str(folder), "--report", str(report)]
    launched = time.time()
    done = subprocess.run(command, env=env, cwd=code, capture_output=True, text=True)
    wall = time.time() - launched
    lines = [
        line.strip()
        for line in done.stderr.splitlines()
        if any(w in line for w in ("took over", "compil", "pages:", "Error", "error"))
    ]
    result: dict = {"scenario": name, "rc": done.returncode, "wall_s": round(wall, 1)}
    try:
        summary = json.loads(report.read_text())["summary"]
    except (OSError, json.JSONDecodeError, KeyError):
        result["stdout"] = done.stdout[-2000:]
        result["stderr"] = done.stderr[-3000:]
        return result
    busy = summary["stage_busy_s"]
    pages = summary["pages_embedded"]
    stored_at = busy.get("stored_at", summary["elapsed_s"])
    result.update(pages=pages, run_pages_s=round(pages / stored_at, 1))
    result["wall_pages_s"] = round(pages / wall, 1)
    if summary.get("started_at") and "first_stored_at" in busy:
        first = summary["started_at"] + busy["first_stored_at"] - launched
        result["first_page_s"] = round(first, 1)
        result["model_ready_s"] = round(summary["started_at"] - launched, 1)
    result["status"] = lines
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--old", type=Path, default=None, help="the baseline's code")
    parser.add_argument("--pdfs", type=Path, default=SHARED_PDFS / "good")
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=["old-eager-200", "new-200", "new-cold-4452", "new-cached-4452"],
    )
    args = parser.parse_args()
    if not (args.checkpoint / "config.json").is_file():
        print(f"checkpoint written in {write_checkpoint(args.checkpoint, args.device):.1f} s")
    files = sorted(args.pdfs.glob("*.pdf"))
    small, small_pages = corpus(files, 200, 10)
    large, large_pages = corpus(files, None, 12)
    print(f"corpora: {small_pages} and {large_pages} pages", flush=True)
    shared_cache = Path(tempfile.mkdtemp(prefix="compile-cache-"))
    model = {"COLQWEN_MODEL": str(args.checkpoint), "COLQWEN_DEVICE": args.device}
    for name in args.scenarios:
        code = args.old.resolve() if name.startswith("old-") and args.old else ROOT
        if name.startswith("old-") and args.old is None:
            print(f"{name}: needs --old", flush=True)
            continue
        folder = small if name.endswith("-200") else large
        env = dict(model)
        if "eager" in name:
            env["COLQWEN_COMPILE"] = "off"
        if name in {"old-compiled-200", "new-handover-200"}:
            env["COLQWEN_COMPILE"] = "on"
        if name.startswith("new-"):
            fresh = Path(tempfile.mkdtemp(prefix="compile-cache-"))
            env["COLQWEN_COMPILE_CACHE"] = str(shared_cache if "cached" in name else fresh)
            if name == "new-cold-4452":
                env["COLQWEN_COMPILE_CACHE"] = str(shared_cache)  # what it writes, the next reads
        print("RESULT " + json.dumps(run(name, code, folder, env)), flush=True)


if __name__ == "__main__":
    main()
