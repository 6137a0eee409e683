"""Where a GPU encoder's start goes, stage by stage, each variant in a fresh process; and where
an eager forward pass loses to a compiled one, kernel by kernel.

    python -m bench.startup_stages --checkpoint /tmp/ckpt [--variants host device process ...]

Variants:
- ``host``: the checkpoint read into host memory, then moved to the GPU (before issue 34's
  second round).
- ``device``: ``Encoder.load``, the weights read straight onto the GPU.
- ``process``: an ``EncoderProcess`` (spawned, what ``colqwen ingest`` runs per device), from
  its creation to its first page.
- ``graphs``: a cold compile alone (empty caches): the seconds each warm-up batch takes, i.e.
  what each graph costs, and dynamo's own account.
- ``common``: a cold compile of the common shapes only (``warm_up(every_shape=False)``, what
  a handover's successor compiles), then the rare shapes, eager.
- ``profile``: one A4 batch eager and compiled under the profiler: the GPU time by kernel.

Each prints ``RESULT {...}``: seconds since the process's launch at each stage's end.
The checkpoint (full-size ColQwen2, random weights) is written first if ``--checkpoint`` has
none (``bench.startup_bench.write_checkpoint``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.common import run_cold

VARIANTS = ("host", "device", "process", "graphs", "common", "profile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(CHILDREN[args.child](args)), flush=True)
        return
    if not (args.checkpoint / "config.json").is_file():
        from bench.startup_bench import write_checkpoint

        written = write_checkpoint(args.checkpoint, args.device)
        print(f"checkpoint written in {written:.1f} s")
    for variant in args.variants:
        options = ["--checkpoint", str(args.checkpoint), "--batch-size", str(args.batch_size)]
        run_cold("bench.startup_stages", variant, [*options, "--device", args.device])


class Clock:
    """Seconds since the process's launch, per named stage."""

    def __init__(self, launched: float) -> None:
        self.launched = launched
        self.marks: dict[str, float] = {}

    def mark(self, stage: str) -> None:

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        self.marks[stage] = round(time.time() - self.launched, 2)


def _pages(encoder, n: int, size=(595, 842)):
    from PIL import Image

    return [Image.effect_noise(encoder.family.size_for(*size, 768), 64).convert("RGB")] * n


def stages(args, via_host: bool) -> dict:
    clock = Clock(args.launched)
    import torch

    clock.mark("import torch")
    torch.zeros(1, device=args.device)
    clock.mark("CUDA context")
    import colpali_engine.models  # noqa: F401
    import transformers  # noqa: F401

    clock.mark("import transformers, colpali-engine")
    from retrieval import checkpoint
    from retrieval.encoder import Encoder

    ref = str(args.checkpoint)
    if via_host:
        net, processor, bound = checkpoint.load(ref, "auto", torch.bfloat16, 768, device="cpu")
        clock.mark("weights read into host memory")
        net = net.to(args.device).eval()
        clock.mark("moved to the GPU")
        encoder = Encoder(
            net,
            processor,
            model_id=ref,
            device=args.device,
            max_visual_tokens=768,
            batch_size=args.batch_size,
            family=bound,
        )
    else:
        encoder = Encoder.load(ref, device=args.device, batch_size=args.batch_size, compile="off")
        clock.mark("Encoder.load (weights onto the GPU)")
    encoder.embed_pages(_pages(encoder, 1))
    clock.mark("first page")
    encoder.embed_pages(_pages(encoder, args.batch_size))
    clock.mark("first full batch")
    start = time.perf_counter()
    encoder.embed_pages(_pages(encoder, args.batch_size))
    clock.mark("second full batch")
    return {
        "variant": "host" if via_host else "device",
        "stages": clock.marks,
        "eager_pages_s": round(args.batch_size / (time.perf_counter() - start), 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_initialized()
        else None,
    }


def process(args) -> dict:
    clock = Clock(args.launched)
    import functools

    from retrieval.encoder import Encoder
    from retrieval.encoder_process import EncoderProcess

    clock.mark("imports")
    factory = functools.partial(
        Encoder.load, str(args.checkpoint), device=args.device, batch_size=args.batch_size
    )
    worker = EncoderProcess(factory, args.device, warm_up=False, wait=False)
    clock.mark("encoder process spawned")
    structure = Encoder.structure(str(args.checkpoint), batch_size=args.batch_size)
    clock.mark("host's structure (meta)")
    pages = _pages(structure, 1)
    worker.wait_ready()
    clock.mark("encoder process ready")
    worker.embed_pages(pages)
    clock.mark("first page")
    worker.embed_pages(_pages(structure, args.batch_size))
    clock.mark("first full batch")
    worker.close()
    return {"variant": "process", "stages": clock.marks}


def warm_up_by_batch(args, every_shape: bool) -> dict:
    """A cold compile's warm-up (``Encoder.warm_up(every_shape=...)`` itself), the seconds of
    each of its batches (what each graph costs) and dynamo's own account; after a warm-up of
    the common shapes, what the rare ones cost, run eager."""
    clock = Clock(args.launched)
    import torch
    from PIL import Image

    from retrieval.encoder import Encoder

    encoder = Encoder.load(str(args.checkpoint), device=args.device, batch_size=args.batch_size)
    clock.mark("model ready")
    seconds: list[tuple[str, float]] = []
    embed_pages = encoder.embed_pages

    def timed(images, *rest, **options):
        start = time.perf_counter()
        pages = embed_pages(images, *rest, **options)
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
        sizes = sorted({"x".join(map(str, image.size)) for image in images})
        seconds.append((f"{len(images)} pages, {' + '.join(sizes)}", time.perf_counter() - start))
        return pages

    encoder.embed_pages = timed  # what warm_up calls, batch by batch
    encoder.compile()
    warm_up_s = encoder.warm_up(every_shape=every_shape)
    clock.mark("warmed up")
    print(torch._dynamo.utils.compile_times(repr="str")[:4000], flush=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    warm_up_batches = len(seconds)
    if not every_shape:
        sizes = encoder.family.warm_up_sizes(768)
        first, last = Image.new("RGB", sizes[0]), Image.new("RGB", sizes[-1])
        encoder.embed_pages([first, last] * 4)  # two sizes: eager now
        encoder.embed_pages([first])  # a single page: eager now
    return {
        "variant": "graphs" if every_shape else "common",
        "stages": clock.marks,
        "warm_up_s": round(warm_up_s, 2),
        "graphs": graphs,
        "batch_s": [(name, round(s, 2)) for name, s in seconds[:warm_up_batches]],
        "eager_after_s": [(name, round(s, 2)) for name, s in seconds[warm_up_batches:]],
    }


def profile(args) -> dict:
    """GPU time by kernel of one A4 batch, eager then compiled (printed tables)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    from bench.ingest_bench import forward_alone
    from retrieval.encoder import Encoder

    encoder = Encoder.load(str(args.checkpoint), device=args.device, batch_size=args.batch_size)
    result: dict = {"variant": "profile"}
    inputs = encoder.preprocess(_pages(encoder, args.batch_size))
    for kind in ("eager", "compiled"):
        if kind == "compiled":
            encoder.compile()
            encoder.warm_up()
        encoder.finish(encoder.launch(inputs))
        on_gpu = args.device.startswith("cuda")
        activity = ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU
        with profiler(activities=[activity]) as prof:
            encoder.finish(encoder.launch(inputs))
            torch.cuda.synchronize()
        order = "cuda_time_total" if on_gpu else "cpu_time_total"
        table = prof.key_averages().table(sort_by=order, row_limit=30)
        print(f"--- {kind}\n{table}", flush=True)
        events = prof.key_averages()
        result[f"{kind}_kernels_ms"] = round(
            sum(e.self_device_time_total for e in events) / 1000, 1
        )
        result[f"{kind}_pages_s"] = round(forward_alone(encoder, args.batch_size), 1)
    return result


CHILDREN = {
    "host": lambda args: stages(args, via_host=True),
    "device": lambda args: stages(args, via_host=False),
    "process": process,
    "graphs": lambda args: warm_up_by_batch(args, every_shape=True),
    "common": lambda args: warm_up_by_batch(args, every_shape=False),
    "profile": profile,
}


if __name__ == "__main__":
    main()
