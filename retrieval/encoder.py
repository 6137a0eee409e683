"""ColQwen2 encoder: images and queries in, float32 multivectors out.

The work is split in three steps so the ingestion pipeline can overlap them:
``preprocess`` (CPU: resize, patchify, tokenize), ``forward`` (the device) and ``postprocess``
(strip left padding with the attention mask, find the image span by ``image_token_id``, reshape
the visual tokens into their (rows, cols) raster). ``embed_pages`` and ``embed_queries`` chain them.

NOTE: never slice the output by position. Batches are left-padded and the page prompt puts 4
tokens before the image; ``emb[:, :n_x * n_y]`` (a popular recipe) is wrong.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.config import ModelFamily, Settings
from retrieval.errors import ConfigurationError, InvalidInput, ModelLoadError
from retrieval.models import COLQWEN2, Family
from retrieval.models import resolve as resolve_family
from retrieval.types import PageEmbedding

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 2048


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> cuda, then mps, then cpu; anything else is checked and returned."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigurationError(f"device '{device}' requested but CUDA is not available")
    if device not in {"cpu", "mps"} and not device.startswith("cuda"):
        raise ConfigurationError(f"unknown device '{device}': use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_devices(device: str = "auto") -> list[str]:
    """Every device to ingest on: ``auto`` -> every visible GPU (else cuda, mps or cpu as
    ``resolve_device``); ``cuda:0,cuda:1`` -> those; one device -> itself."""
    import torch

    names = [d.strip() for d in device.split(",") if d.strip()]
    if names == ["auto"] and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if len(names) == 1:
        return [resolve_device(names[0])]
    if not names or any(not n.startswith("cuda") for n in names):
        raise ConfigurationError(
            f"device '{device}': a list names CUDA devices, e.g. cuda:0,cuda:1"
        )
    resolved = [resolve_device(n) for n in names]
    if len(set(resolved)) != len(resolved):
        raise ConfigurationError(f"device '{device}' names a device twice")
    return resolved


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 elsewhere."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]


class Encoder:
    """A loaded ColQwen2 model and processor. Thread-safe: forward passes are serialised."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str,
        device: str,
        max_visual_tokens: int,
        batch_size: int = 8,
        query_batch_size: int = 32,
        family: Family = COLQWEN2,
    ) -> None:
        self.model = model
        self.family = family  # the page geometry and prompt of this model
        self.processor = processor
        self.model_id = model_id
        self.device = device
        self.max_visual_tokens = max_visual_tokens
        self.batch_size = batch_size
        self.query_batch_size = query_batch_size
        # Largest page batch known to fit in device memory; learned on CUDA out-of-memory.
        self.fitting_batch_size: int | None = None
        self.image_token_id: int = processor.image_token_id
        self.merge_size: int = processor.image_processor.merge_size
        self.dim: int = int(model.dim)
        self._lock = threading.Lock()
        # Data-parallel copies on other devices, for ingestion (``replicate``); queries use this.
        self.replicas: list[Encoder] = [self]
        self.compiled = False

    # --- loading -----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        model: str = "vidore/colqwen2-v1.0",
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_visual_tokens: int = 768,
        family: ModelFamily = "auto",
        batch_size: int = 8,
        query_batch_size: int = 32,
        compile: str = "off",
    ) -> Encoder:
        """Load a checkpoint: a hub id, a local model directory, or a local PEFT adapter directory
        (``adapter_config.json`` naming its base), always capped at ``max_visual_tokens``.

        ``device`` may name several CUDA devices (or ``auto``: every visible GPU): the model is
        replicated on each for ingestion. ``compile``: on, off, or auto (on for CUDA)."""
        import transformers

        transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar on stderr
        devices = resolve_devices(device)
        torch_dtype = resolve_dtype(dtype, devices[0])
        net, processor = _load_checkpoint(model, family, torch_dtype, max_visual_tokens)
        net = net.to(devices[0]).eval()
        log.info("loaded %s on %s (%s)", model, ", ".join(devices), torch_dtype)
        encoder = cls(
            net,
            processor,
            model_id=model,
            device=devices[0],
            max_visual_tokens=max_visual_tokens,
            batch_size=batch_size,
            query_batch_size=query_batch_size,
            family=resolve_family(family, model),
        )
        encoder.replicate(devices[1:])
        if compile == "on" or (compile == "auto" and devices[0].startswith("cuda")):
            encoder.compile()
        return encoder

    def replicate(self, devices: Sequence[str]) -> None:
        """Copies of the model on ``devices``: the ingestion pipeline feeds them in parallel."""
        import copy

        for device in devices:
            net = copy.deepcopy(self.model).to(device).eval()
            self.replicas.append(
                Encoder(
                    net,
                    self.processor,
                    model_id=self.model_id,
                    device=device,
                    max_visual_tokens=self.max_visual_tokens,
                    batch_size=self.batch_size,
                    query_batch_size=self.query_batch_size,
                    family=self.family,
                )
            )

    def compile(self, mode: str | None = None) -> None:
        """``torch.compile`` each vision block and text decoder layer, on every replica: fused
        elementwise kernels (rotary embeddings, casts, norms) around the same matmuls and
        attention; same embeddings. Graphs are static: ``warm_up`` traces the common page
        shapes (a full batch of A4, Letter, landscape pages), after which any other shape runs
        eager rather than stalling ingestion for a new trace. ``mode``: torch.compile's
        (``reduce-overhead`` adds CUDA graphs)."""
        import torch

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        # Round to bf16 between fused ops as eager does: embeddings stay those of eager mode.
        torch._inductor.config.emulate_precision_casts = True
        for replica in self.replicas:
            for stack in _compilable_stacks(replica.model):
                for i, module in enumerate(stack):
                    stack[i] = torch.compile(module, dynamic=False, mode=mode)
            replica.compiled = True

    def warm_up(self, grids: Sequence[tuple[int, int]] = ((33, 23), (31, 24), (23, 33))) -> float:
        """Run a batch of blank pages of each (rows, cols) grid on every replica, so compiling
        (and cuDNN's autotuning) is paid before real pages arrive. Returns seconds spent."""
        import torch
        from PIL import Image

        start = time.perf_counter()
        if self.compiled:
            torch.compiler.set_stance("default")
        for rows, cols in grids:
            size = self.family.pixels_for((rows, cols))
            pages = [Image.new("RGB", size, "white")] * self.batch_size
            for replica in self.replicas:
                replica.embed_pages(pages)
        if self.compiled:
            torch.compiler.set_stance("eager_on_recompile")  # other shapes: eager, no stall
        return time.perf_counter() - start

    @classmethod
    def from_settings(cls, settings: Settings) -> Encoder:
        return cls.load(
            settings.model,
            device=settings.device,
            dtype=settings.dtype,
            max_visual_tokens=settings.max_visual_tokens,
            family=settings.model_family,
            batch_size=settings.batch_size,
            query_batch_size=settings.query_batch_size,
            compile=settings.compile,
        )

    # --- pages ---------------------------------------------------------------------------------

    def preprocess(self, images: Sequence[Image.Image]) -> Any:
        """Resize/normalise/patchify the images and build the left-padded page prompts.

        colpali-engine's ``process_images``, plus one thing: on CUDA the image processor runs on
        the GPU (~13 ms a page of CPU otherwise, which at ~40 pages/s needs more than a core).
        """
        import torch

        if not images:
            raise InvalidInput("no images to embed")
        on_gpu = {"device": self.device} if self.device.startswith("cuda") else {}
        with warnings.catch_warnings():
            # transformers warns on every call that ColQwen2Processor sets max_pixels its old way.
            warnings.filterwarnings(
                "ignore", message="Passing `min_pixels`", category=FutureWarning
            )
            batch = self.processor(
                text=[self.processor.visual_prompt_prefix] * len(images),
                images=[image.convert("RGB") for image in images],
                padding="longest",
                return_tensors="pt",
                **on_gpu,
            )
        # As colpali-engine does: one padded row of patches per image.
        grid = batch["image_grid_thw"]  # (batch, 3)
        offsets = (grid[:, 1] * grid[:, 2]).tolist()
        patches = torch.split(batch["pixel_values"], offsets)  # [(n_patches_i, patch_dim)]
        batch["pixel_values"] = torch.nn.utils.rnn.pad_sequence(patches, batch_first=True)
        return batch

    def forward(self, batch: Any) -> torch.Tensor:
        """Device step: (batch, seq_len, dim) embeddings, zero on padding. Serialised by a lock."""
        import torch

        with self._lock, torch.inference_mode():
            inputs = {k: v.to(self.device) for k, v in batch.items()}
            return self.model(**inputs)

    def postprocess(self, batch: Any, output: torch.Tensor) -> list[PageEmbedding]:
        """CPU step: unpad each row, locate the visual span, reshape it to its grid."""
        out = output.float().cpu().numpy()  # (batch, seq_len, dim)
        mask = batch["attention_mask"].bool().cpu().numpy()  # (batch, seq_len)
        ids = batch["input_ids"].cpu().numpy()  # (batch, seq_len)
        grids = batch["image_grid_thw"].cpu().numpy()  # (batch, 3): t, h, w in patches
        pages = []
        for row, keep, row_ids, (_, grid_h, grid_w) in zip(out, mask, ids, grids, strict=True):
            tokens = np.ascontiguousarray(row[keep], dtype=np.float32)  # (n_tokens, dim)
            is_visual = row_ids[keep] == self.image_token_id  # (n_tokens,)
            rows, cols = int(grid_h) // self.merge_size, int(grid_w) // self.merge_size
            if int(is_visual.sum()) != rows * cols:
                raise RuntimeError(
                    f"found {int(is_visual.sum())} image tokens, expected {rows}x{cols}"
                )
            pages.append(
                PageEmbedding(
                    multivector=tokens,
                    grid=(rows, cols),
                    visual=tokens[is_visual].reshape(rows, cols, -1),
                    special=tokens[~is_visual],
                )
            )
        return pages

    def embed_pages(
        self, images: Sequence[Image.Image], batch_size: int | None = None
    ) -> list[PageEmbedding]:
        """Embed page images, ``batch_size`` (default: the encoder's) at a time.

        On CUDA out-of-memory the batch is halved and retried, and the encoder remembers the
        size that fits. Results do not depend on the batch size.
        """
        images = list(images)
        size = batch_size or self.batch_size
        if self.fitting_batch_size is not None:
            size = min(size, self.fitting_batch_size)
        pages: list[PageEmbedding] = []
        start = 0
        while start < len(images):
            chunk = images[start : start + size]
            batch = self.preprocess(chunk)
            try:
                output = self.forward(batch)
            except Exception as exc:
                size = self._smaller_batch_after(exc, len(chunk))
                continue
            pages.extend(self.postprocess(batch, output))
            start += len(chunk)
        return pages

    def _smaller_batch_after(self, exc: Exception, n: int) -> int:
        """Re-raise anything but a CUDA OOM; otherwise halve ``n`` and remember it."""
        import torch

        if not isinstance(exc, torch.cuda.OutOfMemoryError) or n <= 1:
            raise exc
        torch.cuda.empty_cache()
        smaller = max(1, n // 2)
        self.fitting_batch_size = smaller
        log.warning("CUDA out of memory at batch %d; retrying at %d", n, smaller)
        return smaller

    # --- queries -------------------------------------------------------------------------------

    def embed_queries(
        self, texts: Sequence[str], batch_size: int | None = None
    ) -> list[np.ndarray]:
        """Embed queries: one float32 (n_tokens, dim) array each, augmentation tokens kept,
        padding dropped."""
        for text in texts:
            if not text or not text.strip():
                raise InvalidInput("query is empty")
            if len(text) > MAX_QUERY_CHARS:
                raise InvalidInput(
                    f"query is {len(text)} characters; the limit is {MAX_QUERY_CHARS}"
                )
        size = batch_size or self.query_batch_size
        result: list[np.ndarray] = []
        for chunk in _chunks(list(texts), size):
            batch = self.processor.process_queries(chunk)
            out = self.forward(batch).float().cpu().numpy()  # (batch, seq_len, dim)
            mask = batch["attention_mask"].bool().cpu().numpy()  # (batch, seq_len)
            result.extend(
                np.ascontiguousarray(r[m], dtype=np.float32) for r, m in zip(out, mask, strict=True)
            )
        return result


def _compilable_stacks(model: Any) -> list[Any]:
    """The repeated blocks of a ColQwen2-style model: vision blocks, text decoder layers."""
    stacks = []
    for path in ("visual.blocks", "language_model.layers", "model.visual.blocks",
                 "model.language_model.layers"):  # fmt: skip
        node = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if node is not None and all(node is not s for s in stacks):
            stacks.append(node)
    if not stacks:
        log.warning("compile: no vision blocks or decoder layers found; running eager")
    return stacks


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --- checkpoint loading --------------------------------------------------------------------------

_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def _load_checkpoint(
    ref: str, family: str, torch_dtype: torch.dtype, max_visual_tokens: int
) -> tuple[Any, Any]:
    import colpali_engine.models as models

    path = Path(ref).expanduser()
    local = path.exists()
    if local:
        processor_source = _check_local_checkpoint(path)
    elif _looks_like_path(ref):
        raise ModelLoadError(f"model directory '{ref}' does not exist")
    else:
        processor_source = ref
    spec = resolve_family(family, ref)
    model_cls, processor_cls = getattr(models, spec.model_cls), getattr(models, spec.processor_cls)
    source = str(path) if local else ref
    try:
        net = model_cls.from_pretrained(source, dtype=torch_dtype, local_files_only=local)
        processor = processor_cls.from_pretrained(
            processor_source, local_files_only=local, max_num_visual_tokens=max_visual_tokens
        )
    except (OSError, ValueError, KeyError) as exc:
        where = f"local directory '{path}'" if local else f"'{ref}' (hub id)"
        raise ModelLoadError(
            f"cannot load model from {where}: {exc}. Set COLQWEN_MODEL to a local checkpoint "
            "directory when the model hub is unreachable."
        ) from exc
    return net, processor


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
