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
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
        caches = Path(tempfile.mkdtemp(prefix=f"cache-{variant}-"))
        env = {
            **os.environ,
            "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
            "TRITON_CACHE_DIR": str(caches / "triton"),
        }
        command = [sys.executable, "-m", "bench.startup_stages", "--child", variant]
        command += ["--checkpoint", str(args.checkpoint), "--batch-size", str(args.batch_size)]
        command += ["--device", args.device]
        command += ["--launched", str(time.time())]
        print(f"== {variant}", flush=True)
        subprocess.run(command, env=env, check=False)


class Clock:
    """Seconds since the process's launch, per named stage."""

    def __init__(self, launched: float) -> None:
        self.launched = launched
        self.marks: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        import sys

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


def graphs(args) -> dict:
    """A cold compile's warm-up, batch by batch, as ``Encoder.warm_up`` runs them."""
    clock = Clock(args.launched)
    import torch
    from PIL import Image

    from retrieval.encoder import Encoder

    encoder = Encoder.load(str(args.checkpoint), device=args.device, batch_size=args.batch_size)
    clock.mark("model ready")
    encoder.compile()
    sizes = encoder.family.warm_up_sizes(768)
    first, last = Image.new("RGB", sizes[0]), Image.new("RGB", sizes[-1])
    longer = Image.new("RGB", encoder.family.size_for(612, 1008, 768))
    n = max(1, args.batch_size // 4)
    steps = [(f"full batch {w}x{h}", [Image.new("RGB", (w, h), "white")] * args.batch_size)
             for w, h in sizes]  # fmt: skip
    steps += [
        ("partial batch", [first] * max(3, args.batch_size // 2 + 1)),
        ("two sizes, equal tokens", [first, last] * n + [first]),
        ("unequal tokens", [first, longer] * n + [first]),
        ("one page", [first]),
    ]
    seconds = {}
    for name, pages in steps:
        start = time.perf_counter()
        encoder.embed_pages(pages)
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
        seconds[name] = round(time.perf_counter() - start, 2)
    clock.mark("warmed up")
    print(torch._dynamo.utils.compile_times(repr="str")[:4000], flush=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return {"variant": "graphs", "stages": clock.marks, "step_s": seconds, "graphs": graphs}


def common(args) -> dict:
    """A cold compile of the shapes nearly every batch has (``warm_up(every_shape=False)``,
    what a handover's successor runs); then what the rare shapes cost after it, run eager."""
    clock = Clock(args.launched)
    import torch
    from PIL import Image

    from retrieval.encoder import Encoder

    encoder = Encoder.load(str(args.checkpoint), device=args.device, batch_size=args.batch_size)
    clock.mark("model ready")
    encoder.compile()
    warm_up_s = encoder.warm_up(every_shape=False)
    clock.mark("warmed up")
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    sizes = encoder.family.warm_up_sizes(768)
    first, last = Image.new("RGB", sizes[0]), Image.new("RGB", sizes[-1])
    seconds = {}
    for name, pages in [("two sizes, eager", [first, last] * 4), ("one page, eager", [first])]:
        start = time.perf_counter()
        encoder.embed_pages(pages)
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
        seconds[name] = round(time.perf_counter() - start, 2)
    return {
        "variant": "common",
        "stages": clock.marks,
        "warm_up_s": round(warm_up_s, 2),
        "graphs": graphs,
        "after_s": seconds,
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
    "graphs": graphs,
    "common": common,
    "profile": profile,
}


if __name__ == "__main__":
    main()
