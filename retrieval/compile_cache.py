"""Compiled kernels kept between processes and machines: PyTorch's portable compile cache.

A fresh process compiles the model's blocks again: it traces them (dynamo), lowers the graphs
and generates, compiles and tunes their Triton kernels (inductor). ``torch.compiler.
save_cache_artifacts`` bundles what inductor made (graphs, kernels, tuning results) into bytes
that ``load_cache_artifacts`` puts back into a fresh process's caches, whatever their folder,
so the next process only traces. PyTorch checks that the artefacts match its version, Triton's
and the GPU.

One file per model architecture, compile options, torch and Triton version and GPU, in a folder
of the settings (``compile_cache``: on a volume the workers share, a fresh container warms up
from the files another wrote; BENCHMARKS.md has the figures). The first process to compile
without a file writes one, atomically; a file that cannot be read or written costs its warm-up
time, never the process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retrieval.encoder import Encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmUp:
    """What a warm-up cost, and whether it started from a file or left one."""

    seconds: float
    loaded: bool = False  # the kernels came from a file of the cache
    saved: bool = False  # this warm-up wrote the file


def artefact_key(encoder: Encoder, every_shape: bool = True) -> str:
    """What the compiled kernels depend on, hashed: the architecture (the model's config
    without its name or path), dtype, page geometry and batch size (the warm-up's shapes),
    which shapes it warms up (``Encoder.warm_up``'s ``every_shape``), compile options, torch
    and Triton versions, the GPU."""
    import torch

    config = encoder.model.config.to_dict()
    config.pop("_name_or_path", None)
    parameter = next(encoder.model.parameters())
    device = torch.device(encoder.device)
    gpu = (
        [torch.cuda.get_device_name(device), list(torch.cuda.get_device_capability(device))]
        if device.type == "cuda"
        else [device.type]
    )
    parts = {
        "config": config,
        "dtype": str(parameter.dtype),
        "family": encoder.family.name,
        "max_visual_tokens": encoder.max_visual_tokens,
        "batch_size": encoder.batch_size,
        "every_shape": every_shape,
        "compile": encoder.compile_options,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "gpu": gpu,
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return f"{encoder.family.name}-{hashlib.sha256(blob).hexdigest()[:20]}"


def warm_up(encoder: Encoder, folder: Path | None, *, every_shape: bool = True) -> WarmUp:
    """``encoder.warm_up(every_shape=...)`` (a compiled encoder), starting from the cache's
    file for it when there is one, and leaving one when there was not."""
    if folder is None or not encoder.compiled:
        return WarmUp(encoder.warm_up(every_shape=every_shape))
    import torch

    path = folder / f"{artefact_key(encoder, every_shape)}.bin"
    loaded = False
    if path.is_file():
        start = time.perf_counter()
        try:
            loaded = torch.compiler.load_cache_artifacts(path.read_bytes()) is not None
        except Exception as exc:  # a damaged or foreign file: compile as if it were not there
            log.warning("compile cache %s could not be loaded (%s); compiling anew", path, exc)
        else:
            log.info("compile cache %s loaded in %.1f s", path.name, time.perf_counter() - start)
    seconds = encoder.warm_up(every_shape=every_shape)
    saved = False
    if not loaded:
        saved = _save(path)
    return WarmUp(seconds, loaded=loaded, saved=saved)


def _save(path: Path) -> bool:
    import torch

    artefacts = torch.compiler.save_cache_artifacts()
    if artefacts is None:
        return False
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(artefacts[0])
        os.replace(part, path)  # whole or not at all, whoever reads it meanwhile
    except OSError as exc:
        part.unlink(missing_ok=True)
        log.warning("compile cache %s could not be written: %s", path, exc)
        return False
    log.info("compile cache %s written (%.1f MB)", path.name, len(artefacts[0]) / 1e6)
    return True


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "none"
    return triton.__version__
