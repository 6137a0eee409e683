"""Checkpoints: what a model reference names, and loading its processor and model.

A model is named by a hub id or a local directory (a model, or a PEFT adapter naming its base).
``identify`` turns a reference into a ``ModelIdentity`` that holds from any working directory:
a local directory by its absolute path and a fingerprint of its contents (its configuration and
a sample of its weights: two copies of one checkpoint agree, two trainings of one architecture
do not), a hub id as it is. Collections record it, and ``ModelIdentity.serves`` is the one rule
for "may this model serve that collection". Nothing here imports torch until a checkpoint is
loaded.

``load_processor`` is the one place a checkpoint's geometry comes from: its own processor, as
colpali-engine builds it, binds the family (``Family.bind``). The encoder loads its model
beside it (``load``); rendering asks ``geometry``, which loads the processor alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.errors import ModelLoadError
from retrieval.models import Family
from retrieval.models import resolve as resolve_family
from retrieval.types import ModelIdentity

if TYPE_CHECKING:
    import torch

_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
# What a checkpoint's behaviour depends on, besides its weights.
_CONFIG_FILES = (
    "config.json",
    "adapter_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
)
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt")
# Keys that say where a checkpoint was, or what wrote it: not what it is.
_WHERE_KEYS = {"_name_or_path", "name_or_path", "base_model_name_or_path", "transformers_version"}
_SAMPLES, _SAMPLE_BYTES, _HEAD_BYTES = 16, 4096, 1 << 16


def identify(ref: str) -> ModelIdentity:
    """The identity of checkpoint ``ref``: a local directory (relative to the working
    directory, ``~`` expanded) by its absolute path and its fingerprint; a hub id as given."""
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path.resolve()
        return ModelIdentity(str(path), _fingerprint_of(path, _signature(path)))
    return ModelIdentity(ref)


def _signature(path: Path) -> tuple:
    """What changes when a checkpoint directory's files do: their names, sizes and times
    (one directory listing). Fingerprints are kept by it, so a service that checks every
    upload against its model reads the weights once, not once an upload."""
    return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path)))


@lru_cache(maxsize=32)
def _fingerprint_of(path: Path, signature: tuple) -> str:
    return _fingerprint(path)


def _fingerprint(path: Path) -> str:
    """sha256 over the checkpoint's configuration (where-it-was keys left out) and its weight
    files: their names, sizes, first 64 KB (a safetensors header) and 16 blocks spread over
    each. A few reads, whatever the checkpoint's size; an adapter includes its base's."""
    digest = hashlib.sha256()
    for name in _CONFIG_FILES:
        file = path / name
        if not file.is_file():
            continue
        digest.update(name.encode())
        try:
            raw = json.loads(file.read_text())
        except (OSError, ValueError):
            digest.update(file.read_bytes())
            continue
        data = raw
        if isinstance(raw, dict):
            data = {k: v for k, v in raw.items() if k not in _WHERE_KEYS}
        digest.update(json.dumps(data, sort_keys=True).encode())
        if name == "adapter_config.json" and isinstance(raw, dict):
            base = raw.get("base_model_name_or_path") or ""
            found = identify(base) if base else ModelIdentity("")
            digest.update((found.fingerprint or found.name).encode())
    weights = sorted({f for pattern in _WEIGHTS for f in path.glob(pattern) if f.is_file()})
    for file in weights:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as f:
            digest.update(f.read(_HEAD_BYTES))
            for i in range(_SAMPLES):
                f.seek(size * i // _SAMPLES)
                digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:32]


# --- loading -------------------------------------------------------------------------------------


def load_processor(ref: str, family: str, max_visual_tokens: int) -> tuple[Any, Family]:
    """colpali-engine's processor of checkpoint ``ref``, and its family bound to the geometry
    that processor is configured for (``Family.bind``)."""
    import colpali_engine.models as models

    path, local = _locate(ref)
    source = _check_local_checkpoint(path) if local else ref
    spec = resolve_family(family, ref)
    processor_cls = getattr(models, spec.processor_cls)
    with _load_errors(ref, path, local):
        processor = processor_cls.from_pretrained(
            source, local_files_only=local, **spec.processor_kwargs(max_visual_tokens)
        )
    return processor, spec.bind(processor)


@lru_cache(maxsize=8)
def geometry(ref: str, family: str, max_visual_tokens: int) -> Family:
    """The family of checkpoint ``ref``, bound to its processor's geometry: what rendering for
    it needs, without loading the model."""
    return load_processor(ref, family, max_visual_tokens)[1]


def load(
    ref: str,
    family: str,
    torch_dtype: torch.dtype,
    max_visual_tokens: int,
    *,
    weights: bool = True,
    device: str = "cpu",
) -> tuple[Any, Any, Family]:
    """(model, processor, bound family) of checkpoint ``ref``, through colpali-engine, its
    weights read straight onto ``device`` (on a GPU, not through host memory and a second
    copy: BENCHMARKS.md, "A GPU worker's start"); without ``weights``, the model's structure
    alone, on PyTorch's meta device (no weight is read)."""
    import colpali_engine.models as models
    import transformers

    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar on stderr
    processor, bound = load_processor(ref, family, max_visual_tokens)
    path, local = _locate(ref)
    model_cls = getattr(models, bound.model_cls)
    on = device if weights else "meta"
    placement = {} if on == "cpu" else {"device_map": {"": on}}
    with _load_errors(ref, path, local):
        net = model_cls.from_pretrained(
            str(path) if local else ref, dtype=torch_dtype, local_files_only=local, **placement
        )
    if weights:
        _tie_missing_output_head(net)
    return net, processor, bound


def _locate(ref: str) -> tuple[Path, bool]:
    """(path, whether ``ref`` is a local directory); refuses a path that does not exist."""
    path = Path(ref).expanduser()
    if path.exists():
        return path.resolve(), True
    if _looks_like_path(ref):
        raise ModelLoadError(f"model directory '{ref}' does not exist")
    return path, False


@contextmanager
def _load_errors(ref: str, path: Path, local: bool) -> Iterator[None]:
    """Loading errors as ``ModelLoadError``s saying what to do."""
    try:
        yield
    except (OSError, ValueError, KeyError) as exc:
        where = f"local directory '{path}'" if local else f"'{ref}' (hub id)"
        reason = str(exc).strip().rstrip(".")
        raise ModelLoadError(
            f"cannot load model from {where}: {reason}. Set COLQWEN_MODEL to a local "
            "checkpoint directory when the model hub is unreachable."
        ) from exc


def _tie_missing_output_head(net: Any) -> None:
    """ColPali's checkpoints leave out the language model's output head, tied to the input
    embeddings in PaliGemma; transformers 5 then leaves it unloaded (a meta tensor) and the
    model cannot be moved. Tie it back. The head is never used for embeddings."""
    missing = [name for name, p in net.named_parameters() if p.is_meta]
    embeddings = net.get_input_embeddings().weight
    for name in missing:
        owner_path, _, attr = name.rpartition(".")
        owner = net.get_submodule(owner_path)
        if not owner_path.endswith("lm_head") or owner.weight.shape != embeddings.shape:
            raise ModelLoadError(f"checkpoint has no weights for '{name}'")
        setattr(owner, attr, embeddings)


def _check_local_checkpoint(path: Path) -> str:
    """Validate a local model or adapter directory; return where its processor files are."""
    if not path.is_dir():
        raise ModelLoadError(f"model path '{path}' is not a directory")
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if not base:
            raise ModelLoadError(f"adapter '{path}' does not name its base model")
        if _looks_like_path(base) and not Path(base).expanduser().exists():
            raise ModelLoadError(
                f"adapter '{path}' points at base model '{base}', which does not exist; "
                "edit base_model_name_or_path in its adapter_config.json"
            )
        has_processor = any((path / f).is_file() for f in _PROCESSOR_FILES)
        return str(path) if has_processor else str(base)
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"'{path}' is not a model checkpoint (no config.json or adapter_config.json)"
        )
    return str(path)


def _looks_like_path(ref: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else is meant as a filesystem path."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref
