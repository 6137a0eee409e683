"""How long the CLI makes people wait for what needs no model: `--help`, `docs list`, text
search and every refusal, each in a fresh process (as a user runs them), min/median/max.

    uv run python -m bench.cli_bench [--runs 5] [--workdir DIR] [--baseline REPO]

``--baseline REPO``: also run the same commands with the code of another checkout (e.g. a
worktree of an earlier commit: ``git worktree add /tmp/old <rev>``), on data it ingested itself.

The data: a tiny ColQwen2 checkpoint (the model-free paths must not depend on its size), one
3-page PDF ingested into the default collection, and a second checkpoint of the same name with
other weights (another model's refusal). Targets (issue 30): <= 2 s for `--help` and `docs
list`, <= 3 s for text search and every refusal on the 2-core CI machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP_S, MODEL_FREE_S = 2.0, 3.0


def prepare(workdir: Path, repo: Path | None = None) -> dict[str, str]:
    """The checkpoints, a PDF and a collection holding it; the environment to run in (with
    ``repo``: that checkout's code, which ingests the PDF itself)."""
    from tests.documents import make_pdf
    from tests.tiny_model import write_tiny_model

    model, other = workdir / "model", workdir / "other" / "model"
    if not (model / "config.json").is_file():
        write_tiny_model(model)
        write_tiny_model(other, seed=1)
    pdf = workdir / "report.pdf"
    texts = ["quarterly revenue table", "an invoice total", "minutes of the meeting"]
    pdf.write_bytes(make_pdf([(595, 842)] * 3, texts=texts))
    env = {
        **os.environ,
        "COLQWEN_DATA_DIR": str(workdir / "data"),
        "COLQWEN_MAX_VISUAL_TOKENS": "64",
        "COLQWEN_DEVICE": "cpu",
        "COLQWEN_RENDER_WORKERS": "0",
        "COLQWEN_MODEL": str(model),
    }
    for key in ("COLQWEN_QDRANT_URL", "COLQWEN_COLLECTION"):
        env.pop(key, None)
    if repo is not None:
        env["PYTHONPATH"] = str(repo)
        if not (workdir / "data").exists():
            subprocess.run(
                [*_colqwen(), "ingest", str(pdf), "--quiet"], env=env, cwd=workdir, check=True
            )
    elif not (workdir / "data").exists():
        _ingest(pdf, model, workdir / "data")
    return env


def _ingest(pdf: Path, model: Path, data: Path) -> None:
    """The PDF into the default collection, in this process (a command would load the model
    for as long as everything measured here takes together)."""
    from indexer.pipeline import IngestPipeline
    from indexer.sources import discover
    from retrieval.config import Settings
    from retrieval.encoder import Encoder
    from retrieval.store import PageStore

    settings = Settings(_env_file=None, data_dir=data, model=str(model), max_visual_tokens=64)
    encoder = Encoder.load(str(model), device="cpu", max_visual_tokens=64)
    store = PageStore.from_settings(settings)
    try:
        store.ensure_collection_for(settings.collection, settings, encoder)
        IngestPipeline(encoder, store, settings.collection, render_workers=0).run(discover([pdf]))
    finally:
        store.close()


def commands(workdir: Path) -> list[tuple[str, list[str], int]]:
    """(what, arguments, the exit code it must give)."""
    other = str(workdir / "other" / "model")
    doc, pdf = _doc_prefix(workdir), str(workdir / "report.pdf")
    return [
        ("--help", ["--help"], 0),
        ("docs list", ["docs", "list"], 0),
        ("search --mode text", ["search", "invoice total", "--mode", "text"], 0),
        ("refused: empty query", ["search", " "], 1),
        ("refused: 35,000-character query", ["search", "x" * 35_000], 1),
        ("refused: no such collection", ["search", "x", "--collection", "nosuch"], 1),
        ("refused: heatmap of page 999", ["heatmap", doc, "999", "x", "-o", "x.png"], 1),
        ("refused: another model's collection (search)", ["--model", other, "search", "x"], 1),
        ("refused: another model's collection (ingest)", ["--model", other, "ingest", pdf], 1),
        ("refused: drop a missing collection", ["collections", "drop", "nosuch", "--yes"], 1),
    ]  # fmt: skip


def measure(workdir: Path, runs: int = 3, repo: Path | None = None) -> list[dict]:
    """Each command ``runs`` times in a fresh process: seconds, and what it printed last."""
    env = prepare(workdir, repo)
    rows = []
    for what, args, code in commands(workdir):
        times, tail = [], ""
        for _ in range(runs):
            start = time.perf_counter()
            done = subprocess.run(
                [*_colqwen(), *args], env=env, cwd=workdir, capture_output=True, text=True
            )
            times.append(time.perf_counter() - start)
            if done.returncode != code and repo is None:
                raise RuntimeError(f"{what}: exit {done.returncode}, expected {code}: {done}")
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        target = HELP_S if what in ("--help", "docs list") else MODEL_FREE_S
        rows.append(
            {
                "command": what,
                "min_s": min(times),
                "median_s": statistics.median(times),
                "max_s": max(times),
                "target_s": target,
                "says": tail[0][:100],
            }
        )
    return rows


def _colqwen() -> list[str]:
    return [sys.executable, "-m", "app.cli"]


def _doc_prefix(workdir: Path) -> str:
    from retrieval.config import Settings
    from retrieval.store import PageStore

    store = PageStore.from_settings(Settings(_env_file=None, data_dir=workdir / "data"))
    try:
        return store.documents("pages")[0].doc_id[:12]
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to time")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cli-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = measure(workdir, args.runs)
    before = {}
    if args.baseline:
        base = workdir / "baseline"
        base.mkdir(exist_ok=True)
        before = {r["command"]: r for r in measure(base, args.runs, args.baseline)}
    print("| command | median s (min-max) | target s | baseline median s | says |")
    print("|---|---|---|---|---|")
    for r in rows:
        old = before.get(r["command"])
        baseline = f"{old['median_s']:.2f}" if old else "-"
        print(
            f"| {r['command']} | {r['median_s']:.2f} ({r['min_s']:.2f}-{r['max_s']:.2f}) | "
            f"{r['target_s']:g} | {baseline} | {r['says']} |"
        )


if __name__ == "__main__":
    main()
