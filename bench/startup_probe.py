"""What a GPU encoder's start costs, each variant in a fresh process with empty compile caches:
the model's build, its first batch, the compile warm-up, the forward pass after it, and what
PyTorch's portable compile cache ("mega-cache") saves a fresh process.

    python -m bench.startup_probe --device cuda [--variants eager dynamic ...] [--batch-size 32]

Variants (``Encoder.compile`` options):
- ``eager``: no compile.
- ``static-tuned``: static graphs for the warm-up's full batches, dynamic for other shapes,
  coordinate-descent tuning (what ingestion compiled before issue 34).
- ``static``: the same, untuned.
- ``dynamic`` / ``dynamic-tuned``: one graph of symbolic sizes per block for every shape.
- ``mega-dynamic`` / ``mega-dynamic-tuned``: the same in a fresh process with empty caches that
  first loads the artefacts the earlier variant saved (run that one first).
- ``background-dynamic``: eager batches of A4 pages while a second copy of the model compiles
  (``dynamic``) on a thread beside them; then the compiled copy. Prints the pages done against
  time and how long 4,452 pages would take (the forward pass only).

Random weights (``bench.full_size``): they cost what real ones do.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from bench.common import run_cold

VARIANTS = {
    "eager": None,
    "static-tuned": dict(static=True, tune=True),
    "static": dict(static=True, tune=False),
    "dynamic": dict(static=False, tune=False),
    "dynamic-tuned": dict(static=False, tune=True),
    "mega-dynamic": dict(static=False, tune=False),
    "mega-dynamic-tuned": dict(static=False, tune=True),
    "background-dynamic": dict(static=False, tune=False),
}
PAGES = 4452


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--artefacts", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    keep = Path(tempfile.mkdtemp(prefix="mega-"))
    for variant in args.variants:
        artefacts = keep / (variant.removeprefix("mega-") + ".bin")
        options = ["--device", args.device, "--batch-size", str(args.batch_size)]
        run_cold("bench.startup_probe", variant, [*options, "--artefacts", str(artefacts)])


def child(args) -> None:
    launched = args.launched
    import torch
    from PIL import Image

    from bench.ingest_bench import forward_alone, full_size_encoder

    variant, options = args.child, VARIANTS[args.child]
    result: dict = {"variant": variant, "imports_s": time.time() - launched}
    artefacts = Path(args.artefacts)
    if variant.startswith("mega-"):
        start = time.perf_counter()
        info = torch.compiler.load_cache_artifacts(artefacts.read_bytes())
        result["mega_load_s"] = time.perf_counter() - start
        result["mega_bytes"] = artefacts.stat().st_size
        result["mega_info"] = str(info)[:300]
    encoder = full_size_encoder(args.device, args.batch_size)
    torch.cuda.synchronize()
    result["model_ready_s"] = time.time() - launched
    a4 = encoder.family.size_for(595, 842, encoder.max_visual_tokens)
    pages = [Image.new("RGB", a4, "white")] * args.batch_size
    if variant == "background-dynamic":
        result.update(background(encoder, pages, options, launched))
    else:
        start = time.perf_counter()
        encoder.embed_pages(pages[:1])
        torch.cuda.synchronize()
        result["first_page_s"] = time.perf_counter() - start
        result["first_page_since_launch_s"] = time.time() - launched
        if options is not None:
            encoder.compile(**options)
            result["warm_up_s"] = encoder.warm_up()
            times = torch._dynamo.utils.compile_times(repr="str")
            print(times[:3000], flush=True)
        result["a4_batch_pages_s"] = forward_alone(encoder, args.batch_size)
        result["partial_10_pages_s"] = forward_alone(encoder, 10)
        if options is not None and not variant.startswith("mega-"):
            start = time.perf_counter()
            saved = torch.compiler.save_cache_artifacts()
            if saved is not None:
                artefacts.write_bytes(saved[0])
                result["mega_save_s"] = time.perf_counter() - start
                result["mega_bytes"] = len(saved[0])
    result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print("RESULT " + json.dumps(result), flush=True)


def background(encoder, pages, options, launched) -> dict:
    """Eager A4 batches on this thread while a copy of the model compiles and warms up on
    another; then batches of the compiled copy, until 4,452 pages are done."""
    import copy

    import torch

    compiled = copy.copy(encoder)
    compiled.model = copy.deepcopy(encoder.model)
    compiled.copies = [compiled]
    compiled._lock = threading.Lock()
    done = threading.Event()
    warm: dict = {}

    def compile_in_background() -> None:
        start = time.perf_counter()
        compiled.compile(**options)
        warm["warm_up_s"] = compiled.warm_up()
        warm["compile_total_s"] = time.perf_counter() - start
        done.set()

    start = time.perf_counter()
    thread = threading.Thread(target=compile_in_background, daemon=True)
    thread.start()
    marks = []
    total, eager_pages = 0, 0
    while total < PAGES:
        model = compiled if done.is_set() else encoder
        n = min(len(pages), PAGES - total)
        model.embed_pages(pages[:n])
        torch.cuda.synchronize()
        total += n
        eager_pages += 0 if model is compiled else n
        marks.append((round(time.perf_counter() - start, 2), total))
        if total == n:
            first = time.time() - launched
    seconds = time.perf_counter() - start
    thread.join()
    return {
        **warm,
        "first_batch_since_launch_s": first,
        "eager_pages_during_compile": eager_pages,
        "pages": total,
        "seconds": seconds,
        "pages_s_overall": total / seconds,
        "marks": marks[:: max(1, len(marks) // 20)],
    }


if __name__ == "__main__":
    main()
