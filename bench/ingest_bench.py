"""End-to-end ingestion throughput: PDF files -> stored points, against colpali-engine's plain
reference loop on the same pages, in the same run.

    # CPU smoke run with the tiny model (seconds; what CI can afford):
    uv run python -m bench.ingest_bench --smoke
    # GPU: the full-size ColQwen2 architecture with random weights (costs what real weights cost):
    uv run python -m bench.ingest_bench --full-size --device cuda --batch-size 32 --baseline \
        [--compile] [--gpus 2]

Ours: ``IngestPipeline`` (render pool straight to the model's size -> token-budget batches ->
bf16 forward -> embedded Qdrant). Baseline: what colpali-engine's README does, page images
rendered at 200 DPI (pypdfium2 here: poppler is not on the GPU host), then
``processor.process_images`` + ``model(**batch)`` on batches of 4, nothing stored. Both use the
same 768-token budget (the README's default processor would use ~2772 tokens per A4 page).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

from bench.common import SHARED_PDFS, header, table
from indexer.pipeline import IngestPipeline
from indexer.render import RenderOptions
from indexer.render_pool import Renderer
from indexer.sources import discover
from retrieval.encoder import Encoder, resolve_device
from retrieval.store import PageStore
from retrieval.store.edge import EdgeBackend


def full_size_encoder(
    device: str,
    batch_size: int,
    devices: list[str] | None = None,
    compile: bool = False,
    compile_mode: str | None = None,
    family: str = "colqwen2",
    other_shapes: str = "dynamic",
    fp8: bool = False,
) -> Encoder:
    """A family's model at its real size (bench.full_size), random weights, bf16; replicated on
    ``devices`` beyond the first, with fp8 matmuls and compiled if asked (as ``Encoder.load``
    does for a checkpoint)."""
    from bench.full_size import BUILDERS
    from retrieval.models import family as family_named

    model, processor = BUILDERS[family](device)
    n = sum(p.numel() for p in model.parameters())
    print(f"full-size {family}: {n / 1e9:.2f} B parameters on {device}", flush=True)
    encoder = Encoder(
        model,
        processor,
        model_id=f"{family}-full-size-random",
        device=device,
        max_visual_tokens=768,
        batch_size=batch_size,
        family=family_named(family).bind(processor),
    )
    encoder.replicate(devices or [])
    if fp8:
        encoder.use_fp8()
    if compile:
        encoder.compile(compile_mode, other_shapes=other_shapes)
    return encoder


def tiny_encoder(device: str, batch_size: int) -> Encoder:
    from tests.tiny_model import write_tiny_model

    path = write_tiny_model(Path(tempfile.mkdtemp()) / "tiny")
    return Encoder.load(str(path), device=device, batch_size=batch_size)


def ours(
    encoder: Encoder,
    files: list[Path],
    workers: int | None,
    *,
    preprocess_threads: int | None = None,
    switch_interval_ms: float | None = None,
    shared_memory: bool = True,
) -> dict:
    import sys

    store = PageStore(EdgeBackend(Path(tempfile.mkdtemp()) / "qdrant"))
    store.create_collection("bench", model=encoder.model_id, max_visual_tokens=768, dim=encoder.dim)
    marks: list[tuple[float, int]] = []  # (time, pages stored) at each store write
    # Render processes started beforehand, as ``colqwen ingest`` does while the model loads
    # and the worker once for all its jobs.
    options = RenderOptions(max_visual_tokens=encoder.max_visual_tokens, family=encoder.family)
    with Renderer(options, workers=workers, shared_memory=shared_memory) as renderer:
        renderer.start(wait=True)
        pipeline = IngestPipeline(
            encoder,
            store,
            "bench",
            preprocess_threads=preprocess_threads,
            on_progress=lambda p: marks.append((time.perf_counter(), p.pages_done)),
            renderer=renderer,
        )
        sources = discover(files)
        interval = sys.getswitchinterval()
        if switch_interval_ms:
            sys.setswitchinterval(switch_interval_ms / 1000)
        start, cpu = time.perf_counter(), time.process_time()
        try:
            report = pipeline.run(sources)
            cpu = time.process_time() - cpu
        finally:
            sys.setswitchinterval(interval)
    store.close()
    seconds = report.stage_s["stored_at"]
    assert report.ok, [d.error for d in report.documents if d.error]
    return {
        "pages": report.pages_embedded,
        "seconds": report.stage_s.pop("stored_at"),
        "index_s": report.stage_s.pop("index", 0.0),
        "busy": report.stage_s,
        "steady": steady_rate(marks),
        "timeline": timeline(marks, start, seconds)
        + f"; this process's CPU time {1000 * cpu / max(report.pages_embedded, 1):.1f} ms a page",
    }


def steady_rate(marks: list[tuple[float, int]]) -> float:
    """Pages/s between the stores of the 10th and the 90th percent of the pages: the rate of
    a long run, without this one's start (render processes starting, the first batches
    filling) and end (the last, partial batches draining)."""
    total = marks[-1][1] if marks else 0
    inside = [(t, n) for t, n in marks if 0.1 * total <= n <= 0.9 * total]
    if len(inside) < 2 or inside[-1][0] == inside[0][0]:
        return 0.0
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def timeline(marks: list[tuple[float, int]], start: float, seconds: float) -> str:
    """When the first page, 10%, 90% and all of the pages were stored, from the run's start:
    where a run's start and end go beside its steady middle."""
    total = marks[-1][1] if marks else 0
    at = [
        next((t - start for t, n in marks if n >= max(1, share * total)), 0.0)
        for share in (0.0, 0.1, 0.9, 1.0)
    ]
    return (
        f"first page stored at {at[0]:.1f} s, 10% at {at[1]:.1f} s, 90% at {at[2]:.1f} s, "
        f"all at {at[3]:.1f} s, run {seconds:.1f} s"
    )


def trace_batches(encoder: Encoder) -> list[dict]:
    """Record, per batch each replica runs: pages, distinct grids, the seconds its launch takes
    to return (queueing the device's work; any sync inside it shows here) and the launching
    thread's CPU seconds in it, its finish (waiting for the device, then the CPU work), and on
    CUDA the device's own span of the batch (timing events around its work). Returns the list
    it appends to."""
    import torch

    cuda = encoder.device.startswith("cuda")
    records: list[dict] = []
    for replica in encoder.replicas:
        launch, finish = replica.launch, replica.finish

        def event(device: str):
            with torch.cuda.device(device):
                e = torch.cuda.Event(enable_timing=True)
                e.record()
            return e

        def traced_launch(batch, launch=launch, device=replica.device):
            t0, c0 = time.perf_counter(), time.thread_time()
            begin = event(device) if cuda else None
            launched = launch(batch)
            end = event(device) if cuda else None
            launched.times = (t0, time.perf_counter(), time.thread_time() - c0, begin, end, device)
            return launched

        def traced_finish(launched, finish=finish):
            if not hasattr(launched, "times"):  # embedded already (out of memory: halves)
                return finish(launched)
            t2 = time.perf_counter()
            result = finish(launched)
            t3 = time.perf_counter()
            t0, t1, cpu, begin, end, device = launched.times
            records.append(
                {
                    "pages": len(result),
                    "grids": len({p.grid for p in result}),
                    "tokens": int(launched.output.shape[0] * launched.output.shape[1]),
                    "launch": t1 - t0,
                    "launch_cpu": cpu,
                    "rest": t3 - t2,
                    "end": t3,
                    "start": t0,
                    "events": (begin, end),
                    "device": device,
                }
            )
            return result

        replica.launch, replica.finish = traced_launch, traced_finish
    return records


def trace_processes(processes: list) -> list[dict]:
    """Record, per batch the parent sends an encoder process: when its send began and
    returned (a full request queue blocks it), its pages and grids, and when its vectors came
    back. Returns the list it appends to."""
    records: list[dict] = []
    for process in processes:
        launch, finish = process.start, process.collect

        def traced_launch(batch, images, derive, launch=launch, device=process.device):
            t0 = time.perf_counter()
            launched = launch(batch, images, derive)
            grids = {i.size for i in batch.images}
            launched.times = (t0, time.perf_counter(), len(batch.images), len(grids), device)
            return launched

        def traced_finish(launched, finish=finish):
            result = finish(launched)
            t0, t1, pages, grids, device = launched.times
            back = time.perf_counter()
            records.append(
                {"send": t0, "sent": t1, "back": back, "pages": pages, "grids": grids,
                 "device": device}
            )  # fmt: skip
            return result

        process.start, process.collect = traced_launch, traced_finish
    return records


def print_process_trace(records: list[dict], first: int = 16) -> None:
    """The first batches one by one (their send and return, from the first send), then the
    gaps between returns: where the start of a run goes."""
    if not records:
        return
    zero = min(r["send"] for r in records)
    print("\nbatches sent to encoder processes (s from the first send):")
    print("| # | device | pages | grids | send | queued | back | since last back |")
    print("|---|---|---|---|---|---|---|---|")
    last: dict[str, float] = {}
    for i, r in enumerate(records[:first]):
        gap = r["back"] - last.get(r["device"], zero)
        last[r["device"]] = r["back"]
        print(
            f"| {i} | {r['device']} | {r['pages']} | {r['grids']} | {r['send'] - zero:.2f} "
            f"| {r['sent'] - zero:.2f} | {r['back'] - zero:.2f} | {gap:.2f} |"
        )
    full = [r for r in records if r["pages"] >= max(x["pages"] for x in records)]
    partial = len(records) - len(full)
    print(f"{len(records)} batches: {len(full)} full, {partial} partial or mixed\n", flush=True)


def device_counters() -> dict:
    """What the device side did that can stall it: dynamo recompiles and graph breaks, and the
    caching allocator's device mallocs, frees and retries (each retry frees cached blocks and
    syncs the device)."""
    import torch

    stats = torch._dynamo.utils.counters
    out = {
        f"{k}.{n}": v for k in ("stats", "recompiles", "graph_break") for n, v in stats[k].items()
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            mem = torch.cuda.memory_stats(i)
            for key in (
                "num_alloc_retries",
                "num_device_alloc",
                "num_device_free",
                "num_sync_all_streams",
            ):
                out[f"cuda:{i}.{key}"] = mem.get(key, 0)
            out[f"cuda:{i}.reserved_peak_gib"] = round(
                mem.get("reserved_bytes.all.peak", 0) / 2**30, 1
            )
    return out


def sync_check(encoder: Encoder) -> None:
    """Count the device syncs inside one launch (torch's sync debug mode): a batch of one
    grid, and a mixed batch of two. Zero means the device is never left waiting for the CPU
    inside the forward pass."""
    import warnings

    import torch
    from PIL import Image

    family, budget = encoder.family, encoder.max_visual_tokens
    a4 = family.size_for(595, 842, budget)
    wide = family.size_for(842, 595, budget)
    for label, sizes in [("one grid", [a4] * 4), ("two grids", [a4, wide, a4, wide])]:
        batch = encoder.preprocess([Image.new("RGB", s, "white") for s in sizes])
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                encoder.finish(encoder.launch(batch))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        where = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})
        print(f"syncs in one launch + finish, {label}: {len(syncs)} {where}", flush=True)


def print_trace(records: list[dict], batch_size: int) -> None:
    """Per kind of batch: launch and finish seconds; then, on CUDA, where the device's time
    went: its busy span per batch, and the idle gaps between batches."""
    kinds: dict[str, list[dict]] = {}
    for r in records:
        uniform = r["grids"] == 1 and r["pages"] == batch_size
        kinds.setdefault("full, one grid" if uniform else "mixed or partial", []).append(r)
    rows = []
    for kind, rs in kinds.items():
        pages = sum(r["pages"] for r in rs)
        launch, rest = sum(r["launch"] for r in rs), sum(r["rest"] for r in rs)
        cpu = sum(r["launch_cpu"] for r in rs)
        rows.append(
            [
                kind,
                len(rs),
                pages,
                f"{launch:.1f}",
                f"{cpu:.1f}",
                f"{rest:.1f}",
                f"{pages / (launch + rest):.1f}",
            ]
        )
    ordered = sorted(records, key=lambda r: r["start"])
    gaps = sum(max(0.0, b["start"] - a["end"]) for a, b in itertools.pairwise(ordered))
    print(
        table(
            ["batches", "n", "pages", "launch s", "launch CPU s", "wait + post s", "pages/s"], rows
        )
    )
    print(f"encode thread idle between batches: {gaps:.1f} s")
    if ordered[0]["events"][0] is None:
        return
    by_device: dict[str, list[dict]] = {}
    for r in ordered:
        by_device.setdefault(r["device"], []).append(r)
    for device, rs in by_device.items():
        rows, busy, idle = [], 0.0, 0.0
        for i, r in enumerate(rs):
            begin, end = r["events"]
            span = begin.elapsed_time(end) / 1e3
            gap = rs[i - 1]["events"][1].elapsed_time(begin) / 1e3 if i else 0.0
            busy, idle = busy + span, idle + max(gap, 0.0)
            rows.append(
                [
                    i,
                    r["pages"],
                    r["grids"],
                    r["tokens"],
                    f"{r['launch']:.3f}",
                    f"{r['launch_cpu']:.3f}",
                    f"{span:.3f}",
                    f"{gap:.3f}",
                    f"{r['pages'] / span:.1f}",
                ]
            )
        first, last = rs[0]["events"][0], rs[-1]["events"][1]
        wall = first.elapsed_time(last) / 1e3
        print(
            table(
                [
                    "batch",
                    "pages",
                    "grids",
                    "tokens",
                    "launch s",
                    "CPU s",
                    "device span s",
                    "idle before s",
                    "pages/device-s",
                ],
                rows,
            )
        )
        pages = sum(r["pages"] for r in rs)
        print(
            f"device {device}: {pages} pages, first batch to last {wall:.1f} s: batches spanned "
            f"{busy:.1f} s ({pages / busy:.1f} pages/s), idle between them {idle:.1f} s",
            flush=True,
        )


def shape_probe(encoder: Encoder, reps: int = 3) -> None:
    """Pages/s of batches of the shapes ingestion meets, after the warm-up: a full batch of one
    grid (traced by the warm-up), a partial one, and batches of two grids; with the device's
    own busy time (CUDA events) beside the wall time, so a batch the CPU cannot launch fast
    enough shows as a gap between the two."""
    import torch
    from PIL import Image

    family, budget, n = encoder.family, encoder.max_visual_tokens, encoder.batch_size
    a4 = Image.new("RGB", family.size_for(595, 842, budget), "white")
    wide = Image.new("RGB", family.size_for(842, 595, budget), "white")
    odd = Image.new("RGB", family.size_for(500, 700, budget), "white")
    legal = Image.new("RGB", family.size_for(612, 1008, budget), "white")  # more tokens
    shapes = {
        f"{n} A4 (warmed)": [a4] * n,
        f"{n // 3} A4": [a4] * (n // 3),
        f"{n} A4 + landscape": [a4, wide] * (n // 2),
        f"{n // 3} A4 + landscape": [a4, wide] * (n // 6),
        f"{n} A4 + Legal (unequal lengths)": [a4, legal] * (n // 2),
        f"{n // 3} A4 + Legal": [a4, legal] * (n // 6),
        f"{n // 3} of an unwarmed grid": [odd] * (n // 3),
    }
    rows = []
    for label, pages in shapes.items():
        batch = encoder.preprocess(pages)
        encoder.finish(encoder.launch(batch))  # anything this shape needs, paid here
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(reps):
                launched = encoder.launch(batch)
            encoder.finish(launched)
            wall = time.perf_counter() - t0
        busy = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
        rows.append(
            [
                label,
                f"{len(pages) * reps / wall:.1f}",
                f"{wall / reps:.3f}",
                f"{busy / reps:.3f}",
                f"{100 * busy / wall:.0f}%",
            ]
        )
    print(table(["batch", "pages/s", "s a batch", "GPU busy s", "busy"], rows), flush=True)
    print(device_counters(), flush=True)


def baseline(encoder: Encoder, files: list[Path], batch: int = 4) -> dict:
    """colpali-engine's README loop, fed with pages rendered at 200 DPI."""
    import pypdfium2 as pdfium
    import torch

    model, processor = encoder.model, encoder.processor
    start = time.perf_counter()
    pages = 0
    images = []

    def flush() -> None:
        nonlocal images, pages
        batch_inputs = processor.process_images(images).to(model.device)
        with torch.no_grad():
            out = model(**batch_inputs)
        out.float().cpu()  # the README keeps the embeddings; this also waits for the GPU
        pages += len(images)
        images = []

    for f in files:
        pdf = pdfium.PdfDocument(str(f))
        for i in range(len(pdf)):
            images.append(pdf[i].render(scale=200 / 72).to_pil())
            if len(images) == batch:
                flush()
        pdf.close()
    if images:
        flush()
    return {"pages": pages, "seconds": time.perf_counter() - start}


def forward_alone(encoder: Encoder, batch: int, reps: int = 6) -> float:
    """Pages/s of the forward pass alone on one device: A4 pages already preprocessed."""
    from PIL import Image

    inputs = encoder.preprocess([Image.effect_noise((644, 924), 64).convert("RGB")] * batch)
    encoder.finish(encoder.launch(inputs))  # warm, and wait for the device
    start = time.perf_counter()
    for _ in range(reps):
        launched = encoder.launch(inputs)
    encoder.finish(launched)
    return batch * reps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "pdfs", nargs="*", type=Path, help="PDFs or folders (default: shared good PDFs)"
    )
    parser.add_argument(
        "--full-size", action="store_true", help="the real architecture, random weights"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few pages (CI)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="render processes")
    parser.add_argument("--baseline", action="store_true", help="also time the reference loop")
    parser.add_argument("--repeat", type=int, default=1, help="feed the files this many times")
    parser.add_argument("--gpus", type=int, default=1, help="data-parallel over this many GPUs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks")
    parser.add_argument("--compile-mode", default=None, help="e.g. reduce-overhead")
    parser.add_argument("--fp8", action="store_true", help="fp8 matmuls (Encoder.use_fp8)")
    parser.add_argument(
        "--switch-ms",
        type=float,
        default=None,
        help="encoder processes: a run with this GIL switch interval too",
    )
    parser.add_argument(
        "--other-shapes",
        default="dynamic",
        choices=["eager", "dynamic"],
        help="compiled: how shapes the warm-up did not trace run",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help="extra pipeline runs, THREADS:SWITCH_MS each (preprocess threads, GIL switch "
        "interval in ms; 0 = default), e.g. 1:0 4:0.5 1:0.5",
    )
    parser.add_argument("--trace", action="store_true", help="per-batch timings of the encoder")
    parser.add_argument(
        "--no-cudnn-attention",
        action="store_true",
        help="SDPA without its cuDNN backend (flash or memory-efficient kernels instead: no "
        "execution plan to build for each new shape)",
    )
    parser.add_argument(
        "--torch-trace",
        type=Path,
        default=None,
        help="one more pipeline run under torch's profiler: its summary, and its chrome trace "
        "written here (.json.gz)",
    )
    parser.add_argument(
        "--processes", action="store_true", help="also run with an encoder process per GPU"
    )
    parser.add_argument(
        "--processes-only",
        action="store_true",
        help="only the run with an encoder process per GPU (no probes, no threaded run)",
    )
    parser.add_argument(
        "--without",
        nargs="*",
        default=[],
        choices=["shared-memory", "probe-ahead", "nothing"],
        help="with encoder processes: one more run each without this (pages through pipes; "
        "documents opened one at a time; nothing: the same run again), on the same processes",
    )
    parser.add_argument(
        "--sample",
        action="store_true",
        help="with encoder processes: sample the thread stacks of the parent during the run, "
        "and of each encoder process over its life",
    )
    parser.add_argument("--probe-only", action="store_true", help="syncs and batch shapes only")
    parser.add_argument(
        "--null-model",
        action="store_true",
        help="the pipeline's own ceiling: the model's forward pass replaced by random unit "
        "vectors (rendering, preprocessing, batching and storing stay real)",
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.no_cudnn_attention:
        import torch

        torch.backends.cuda.enable_cudnn_sdp(False)
    extra = [f"cuda:{i}" for i in range(1, args.gpus)] if device.startswith("cuda") else []
    inputs = args.pdfs or [SHARED_PDFS / "good"]
    files = [s.path for s in discover(inputs)]
    if args.smoke:
        files = [
            f
            for f in files
            if f.name in {"pdflatex-4-pages.pdf", "multicolumn.pdf", "bach-bwv610.pdf"}
        ] or files[:3]
    if args.processes_only:  # the parent's model only answers what the pipeline asks of it
        build = full_size_encoder if args.full_size else tiny_encoder
        encoder = build(device, args.batch_size)
        # On CPU, several processes share it (with --null-model: the parent's ceiling).
        extra = extra or [device] * (args.gpus - 1)
        in_process(encoder, args, device, extra, repeated(files, args.repeat))
        return
    if args.full_size:
        encoder = full_size_encoder(
            device,
            args.batch_size,
            extra,
            compile=args.compile,
            compile_mode=args.compile_mode,
            other_shapes=args.other_shapes,
            fp8=args.fp8,
        )
    else:
        encoder = tiny_encoder(device, args.batch_size)
        encoder.replicate(extra)
        if args.compile:
            encoder.compile(args.compile_mode, other_shapes=args.other_shapes)
    if args.null_model:
        null_forward(encoder)
    warm_s = encoder.warm_up()
    print(f"warm-up (compile, autotune) {warm_s:.1f} s on {len(encoder.replicas)} device(s)")
    if device.startswith("cuda"):
        sync_check(encoder)
        shape_probe(encoder)
        if args.probe_only:
            return
    alone = forward_alone(encoder, args.batch_size)
    print(f"forward alone, batch {args.batch_size}: {alone:.1f} pages/s per device", flush=True)
    files = repeated(files, args.repeat)
    results = []
    records = trace_batches(encoder) if args.trace else None
    before = device_counters()
    o = ours(encoder, files, args.workers)
    after = device_counters()
    changed = {k: v for k, v in after.items() if v != before.get(k)}
    print(f"during the pipeline run: {changed}", flush=True)
    print(f"threads: {o['timeline']} (steady {o['steady']:.1f} pages/s)", flush=True)
    if records is not None:
        print_trace(records, args.batch_size)
    if args.torch_trace:
        profiled_run(encoder, files, args.workers, args.torch_trace)
    with_index = o["seconds"] + o["index_s"]
    batching = f"batch {args.batch_size}"
    for label, seconds in [
        ("ours: pipeline -> stored points", o["seconds"]),
        ("ours, incl. building the HNSW index", with_index),
    ]:
        results.append(
            [label, batching, o["pages"], f"{seconds:.1f}", f"{o['pages'] / seconds:.1f}"]
        )
    if args.baseline:
        b = baseline(encoder, files)
        results.append(
            [
                "colpali-engine README loop (200 DPI)",
                "batch 4",
                b["pages"],
                f"{b['seconds']:.1f}",
                f"{b['pages'] / b['seconds']:.1f}",
            ]
        )
        speedup = (o["pages"] / with_index) / (b["pages"] / b["seconds"])
    model = "full-size ColQwen2 (random weights)" if args.full_size else "tiny ColQwen2"
    print(header(f"Ingestion end to end: {model} on {device}", "bench.ingest_bench"))
    print(table(["method", "batching", "pages", "seconds", "pages/s"], results))
    if args.baseline:
        print(f"\nspeed-up over the reference loop, index build included: {speedup:.2f}x")
    n = len(encoder.replicas)
    share = o["pages"] / o["seconds"] / (alone * n)
    compiled = (args.compile_mode or "on") if args.compile else "off"
    compiled += ", fp8 matmuls" if args.fp8 else ""
    print(
        f"forward alone: {alone:.1f} pages/s per device x {n}; the pipeline reaches "
        f"{100 * share:.0f}% of it; compile {compiled}, warm-up "
        f"{warm_s:.1f} s (paid once per process, not counted above)"
    )
    busy = o["busy"]
    print(
        "\nbusy time of our stages (s; they overlap): "
        + ", ".join(f"{k} {v:.1f}" for k, v in busy.items())
    )
    rows = []
    for variant in args.variants:
        threads, switch = variant.split(":")
        v = ours(
            encoder,
            files,
            args.workers,
            preprocess_threads=int(threads),
            switch_interval_ms=float(switch) or None,
        )
        rate = v["pages"] / v["seconds"]
        busy = ", ".join(f"{k} {x:.1f}" for k, x in v["busy"].items())
        rows.append([threads, switch or "default", f"{rate:.1f}", busy])
        print(rows[-1], flush=True)
    if rows:
        print()
        print(table(["preprocess threads", "GIL switch ms", "pages/s", "busy s"], rows))
    if args.processes:
        in_process(encoder, args, device, extra, files)


def profiled_run(encoder: Encoder, files: list[Path], workers: int | None, path: Path) -> None:
    """The pipeline once more, under torch's profiler (CPU ops of every thread, CUDA runtime
    calls and kernels): the costliest calls and kernels, and the trace to open in Perfetto."""
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    every_thread = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    with torch.profiler.profile(activities=activities, experimental_config=every_thread) as prof:
        o = ours(encoder, files, workers)
    print(f"\nunder the profiler: {o['pages'] / o['seconds']:.1f} pages/s", flush=True)
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
    print(averages.table(sort_by="self_device_time_total", row_limit=15), flush=True)
    prof.export_chrome_trace(str(path))
    print(f"trace: {path}", flush=True)


class StackSampler:
    """Where this process's threads spend a run, by sampling every thread's stack every
    ``interval_s`` (``sys._current_frames``): per thread, the innermost frames of our code and
    of the libraries below it that recur most. Pure Python, so it runs wherever the bench
    does; a thread waiting on a lock or a queue shows as that wait."""

    def __init__(self, interval_s: float = 0.005) -> None:
        import collections
        import threading

        self.interval_s = interval_s
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def __enter__(self) -> StackSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import sys
        import threading

        me = threading.get_ident()
        while not self._stop.wait(self.interval_s):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                where = []
                while frame is not None and len(where) < 3:
                    code = frame.f_code
                    where.append(f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}")
                    frame = frame.f_back
                self.counts[names.get(ident, str(ident))][" < ".join(where)] += 1

    def report(self, top: int = 6) -> None:
        for name, counter in sorted(self.counts.items()):
            total = sum(counter.values())
            print(f"thread {name}: {total * self.interval_s:.1f} s sampled")
            for where, n in counter.most_common(top):
                print(f"  {100 * n / total:5.1f}%  {where}")


def null_forward(encoder: Encoder) -> None:
    """Replace the forward pass by random unit vectors of the output's shape."""
    import torch

    def forward(batch):
        inputs = batch.inputs
        ids = inputs["input_ids"]
        out = torch.randn(*ids.shape, encoder.dim, device=ids.device)
        return torch.nn.functional.normalize(out, dim=-1) * inputs["attention_mask"][..., None]

    for replica in encoder.replicas:
        replica.forward = forward


def repeated(files: list[Path], repeat: int) -> list[Path]:
    """``files`` ``repeat`` times over, each copy its own document (the pipeline skips files
    it has stored): the same pages, a new hash."""
    if repeat == 1:
        return files
    tmp = Path(tempfile.mkdtemp())
    copies = []
    for i, f in enumerate(files * repeat):
        target = tmp / f"{i:04d}-{f.name}"
        target.write_bytes(f.read_bytes() + f"\n%{i}\n".encode())
        copies.append(target)
    return copies


def in_process(encoder: Encoder, args, device: str, extra: list[str], files: list[Path]) -> None:
    """The same run with the model in a process of its own per device (EncoderProcess)."""
    import functools

    from retrieval.encoder_process import EncoderProcess

    if args.full_size:
        build = functools.partial(
            full_size_encoder,
            batch_size=args.batch_size,
            compile=args.compile,
            compile_mode=args.compile_mode,
            other_shapes=args.other_shapes,
            fp8=args.fp8,
        )
    else:
        build = functools.partial(tiny_encoder, batch_size=args.batch_size)
    if args.null_model:
        build = functools.partial(null_in_child, build)
    if args.sample:
        build = functools.partial(sampled_in_child, build)
    threads = encoder.replicas  # the in-process copies
    t0 = time.perf_counter()
    processes = EncoderProcess.start_many(build, [device, *extra])
    print(f"encoder processes ready in {time.perf_counter() - t0:.1f} s", flush=True)
    records = trace_processes(processes) if args.trace else None
    try:
        encoder.replicas = processes
        if args.sample:
            with StackSampler() as sampler:
                p = ours(encoder, files, args.workers)
            sampler.report()
        else:
            p = ours(encoder, files, args.workers)
        rate = p["pages"] / p["seconds"]
        busy = ", ".join(f"{k} {x:.1f}" for k, x in p["busy"].items())
        n = len(processes)
        print(
            f"\nencoder process per device ({n}): {p['pages']} pages, {rate:.1f} pages/s "
            f"(steady, 10-90% of the pages: {p['steady']:.1f}); {p['timeline']}"
        )
        print(f"busy time (s): {busy}", flush=True)
        if records is not None:
            print_process_trace(records)
            records.clear()
        if args.switch_ms:
            w = ours(encoder, files, args.workers, switch_interval_ms=args.switch_ms)
            print(
                f"GIL switch interval {args.switch_ms} ms: {w['pages'] / w['seconds']:.1f} "
                f"pages/s (steady {w['steady']:.1f}); {w['timeline']}",
                flush=True,
            )
        for lever in args.without:
            w = without(lever, lambda **kw: ours(encoder, files, args.workers, **kw))
            busy = ", ".join(f"{k} {x:.1f}" for k, x in w["busy"].items())
            print(
                f"without {lever}: {w['pages'] / w['seconds']:.1f} pages/s (steady "
                f"{w['steady']:.1f}); busy (s): {busy}"
            )
    finally:
        encoder.replicas = threads
        for process in processes:
            process.close()


def null_in_child(build, device: str) -> Encoder:
    """``build(device)`` with its forward pass replaced by random unit vectors
    (``null_forward``): encoder processes then return pages as fast as the parent takes them,
    so the run measures the parent's own ceiling."""
    encoder = build(device)
    null_forward(encoder)
    return encoder


def sampled_in_child(build, device: str) -> Encoder:
    """``build(device)`` in an encoder process, with a ``StackSampler`` of that process's
    threads running until it exits, when it prints where they spent their time."""
    import atexit

    encoder = build(device)
    sampler = StackSampler().__enter__()

    def report() -> None:
        sampler.__exit__()
        print(f"\n-- encoder process for {device}:")
        sampler.report()

    atexit.register(report)
    return encoder


def without(lever: str, run):
    """``run(shared_memory=...)`` with one of the pipeline's levers off."""
    saved = Renderer.probe_ahead
    if lever == "probe-ahead":
        Renderer.probe_ahead = 0
    try:
        return run(shared_memory=lever != "shared-memory")
    finally:
        Renderer.probe_ahead = saved


if __name__ == "__main__":
    main()
