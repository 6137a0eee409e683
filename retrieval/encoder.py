"""The encoder: images and queries in, float32 multivectors out.

One encoder serves every model family (``retrieval.models``); what differs between families
(preprocessing, where the visual tokens go on the page grid) the family says. The work is split
in three steps so the ingestion pipeline can overlap them: ``preprocess`` (resize, patchify,
tokenize), ``forward`` (the device) and ``postprocess`` (strip padding with the attention mask,
find the visual tokens by the model's image token id, have the family lay them out on the page
grid). ``embed_pages`` and ``embed_queries`` chain them.

NOTE: never slice the output by position. Batches are left-padded and the page prompt puts
tokens before the image; ``emb[:, :n_x * n_y]`` (a popular recipe) is wrong.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval import checkpoint
from retrieval.config import ModelFamily, Settings
from retrieval.errors import ConfigurationError, EncoderError, InvalidInput
from retrieval.models import COLQWEN2, Family
from retrieval.replica import Derive, Encoded, Replica
from retrieval.shared_image import SharedImage, load
from retrieval.types import ModelIdentity, PageEmbedding

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)


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


@dataclass
class PageBatch:
    """Page images ready for the model: its ``inputs``, and each image's (width, height)."""

    inputs: Any
    sizes: list[tuple[int, int]]


@dataclass
class Launched:
    """A batch whose forward pass is queued: its output (batch, seq_len, dim), a host copy on
    its way, complete once ``done`` (a CUDA event; None: complete already) has fired."""

    batch: PageBatch
    output: Any
    done: Any = None


# A batch ``Encoder.start`` launched, and the ``derive`` its ``collect`` applies.
_Started = tuple["Launched | list[PageEmbedding]", "Derive | None"]


class Encoder:
    """A loaded late-interaction model and processor. Thread-safe: forward passes are serialised."""

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
        identity: ModelIdentity | None = None,
    ) -> None:
        self.model = model
        self.family = family  # the page geometry and prompt of this model
        family.prepare(model)
        if not family.reads_hidden_states:
            _without_output_capture(model)
        self.processor = processor
        # What collections record and match (``retrieval.checkpoint.identify``): a local
        # checkpoint by its absolute path and fingerprint, whatever the working directory.
        self.identity = identity or ModelIdentity(model_id)
        self.model_id = self.identity.ref
        self.device = device
        self.max_visual_tokens = max_visual_tokens
        self.batch_size = batch_size
        self.query_batch_size = query_batch_size
        # Largest page batch known to fit in device memory; learned on CUDA out-of-memory.
        self.fitting_batch_size: int | None = None
        self.image_token_id: int = family.image_token_id(model)
        self.dim: int = int(model.dim)
        self._lock = threading.Lock()
        # The tokenizer's padding setting is changed by each call (a mutable borrow in Rust):
        # two threads tokenizing at once fail with "Already borrowed" (an API request's
        # query_words beside the batcher's embed_queries).
        self._tokenizing = threading.Lock()
        self._bare_ids: list[int] | None = None  # the empty query's tokens (query_words)
        # This model and its data-parallel copies on other devices (``replicate``): compiled,
        # warmed up and run by ingestion together. Queries use this one.
        self.copies: list[Encoder] = [self]
        self._replicas: list[Replica] | None = None  # ``replicas`` when not the copies
        self.compiled = False
        self.compile_options: dict[str, Any] = {}  # how it was compiled: what kernels depend on
        self.fp8 = False
        # torch's CPU thread count when the compiled graphs were traced: dynamo guards on it,
        # and a graph whose guard fails runs eager after the warm-up (see ``forward``).
        self.traced_threads: int | None = None
        self._warned_threads = False

    @property
    def dynamic_graphs(self) -> bool:
        """Whether ``compile`` made graphs of symbolic sizes (``warm_up`` traces them too)."""
        options = self.compile_options
        return bool(options) and (not options["static"] or options["other_shapes"] == "dynamic")

    @property
    def replicas(self) -> list[Replica]:
        """What ingestion runs on (``retrieval.replica``): the copies, or what was set in
        their place (one encoder process per device:
        ``retrieval.encoder_process.ingest_encoder``)."""
        return list(self._replicas) if self._replicas is not None else list(self.copies)

    @replicas.setter
    def replicas(self, replicas: list[Replica] | None) -> None:
        self._replicas = list(replicas) if replicas is not None else None

    # Batches the ingestion pipeline launches on this encoder before it finishes the oldest:
    # one queued behind the running one keeps the device busy.
    lookahead = 1

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
        fp8: bool = False,
    ) -> Encoder:
        """Load a checkpoint: a hub id, a local model directory, or a local PEFT adapter directory
        (``adapter_config.json`` naming its base), always capped at ``max_visual_tokens``.

        ``device`` may name several CUDA devices (or ``auto``: every visible GPU): the model is
        replicated on each for ingestion. ``compile``: on, off, or auto (on for CUDA). ``fp8``: the
        blocks' matmuls in float8 (``use_fp8``)."""
        devices = resolve_devices(device)
        torch_dtype = resolve_dtype(dtype, devices[0])
        net, processor, bound = checkpoint.load(
            model, family, torch_dtype, max_visual_tokens, device=devices[0]
        )
        net = net.to(devices[0]).eval()  # already there: a buffer made elsewhere would follow
        log.info("loaded %s on %s (%s)", model, ", ".join(devices), torch_dtype)
        encoder = cls(
            net,
            processor,
            model_id=model,
            device=devices[0],
            max_visual_tokens=max_visual_tokens,
            batch_size=batch_size,
            query_batch_size=query_batch_size,
            family=bound,
            identity=checkpoint.identify(model),
        )
        encoder.replicate(devices[1:])
        if fp8:
            encoder.use_fp8()
        if compiles(compile, devices[0]):
            encoder.compile()
        return encoder

    @classmethod
    def structure(
        cls,
        model: str,
        *,
        max_visual_tokens: int = 768,
        family: ModelFamily = "auto",
        batch_size: int = 8,
    ) -> Encoder:
        """The checkpoint's model without its weights (on PyTorch's meta device) and its
        processor: what a host that only drives encoder processes asks of its model (family,
        size, processor, identity), in a second and no memory, where loading the weights too
        took seconds and a copy of them. It embeds nothing."""
        import torch

        net, processor, bound = checkpoint.load(
            model, family, torch.bfloat16, max_visual_tokens, weights=False
        )
        return cls(
            net.eval(),
            processor,
            model_id=model,
            device="meta",
            max_visual_tokens=max_visual_tokens,
            batch_size=batch_size,
            family=bound,
            identity=checkpoint.identify(model),
        )

    def replicate(self, devices: Sequence[str]) -> None:
        """Copies of the model on ``devices``: the ingestion pipeline feeds them in parallel."""
        import copy

        for device in devices:
            net = copy.deepcopy(self.model).to(device).eval()
            self.copies.append(
                Encoder(
                    net,
                    self.processor,
                    model_id=self.model_id,
                    device=device,
                    max_visual_tokens=self.max_visual_tokens,
                    batch_size=self.batch_size,
                    query_batch_size=self.query_batch_size,
                    family=self.family,
                    identity=self.identity,
                )
            )

    def use_fp8(self) -> None:
        """Run the linear layers of every vision block and decoder layer as float8 products
        (``retrieval.models.fp8``), on every replica: 1.15x the compiled bf16 forward pass on an
        H100, embeddings close to bf16's but not equal (BENCHMARKS.md). Before ``compile``."""
        from retrieval.models import fp8

        for replica in self.copies:
            fp8.check_device(replica.device)
            swapped = fp8.use(_compilable_stacks(replica.model))
            replica.fp8 = True
            log.info("fp8 matmuls: %d linear layers on %s", swapped, replica.device)

    def compile(
        self,
        mode: str | None = None,
        *,
        static: bool = False,
        other_shapes: str = "dynamic",
        backend: str = "inductor",
        tune: bool = False,
    ) -> None:
        """``torch.compile`` each vision block and text decoder layer, on every replica: fused
        elementwise kernels (rotary embeddings, casts, norms) around the same matmuls and
        attention; same embeddings. ``warm_up`` traces them before real pages arrive.

        By default each block has one graph of symbolic sizes for every batch shape: as fast
        as graphs of static shapes on full batches of A4 pages (62.5 pages/s on an H200 either
        way, BENCHMARKS.md), at a fraction of the tracing. ``static``: graphs of static shapes
        for the warm-up's full batches (A4, Letter, landscape) and, for any other shape,
        ``other_shapes``: ``dynamic`` (a graph of symbolic sizes too) or ``eager``. Each
        block traces whole: transformers' output-capturing hooks, which dynamo cannot trace,
        are off since the model was loaded (``_without_output_capture``: 6 graphs, not 22).
        ``mode``: torch.compile's (``reduce-overhead`` adds CUDA graphs). ``backend``:
        torch.compile's (the tests trace with ``eager``: the same graphs and guards, no code
        generated). ``tune``: the fused kernels' block sizes tuned by coordinate descent: the
        forward pass 62.5 -> 64.3 pages/s on an H200, for a warm-up of 64 s instead of 41 (on
        the GPU an eager model keeps busy during the handover, its benchmarks are slow and
        noisy: off by default; BENCHMARKS.md)."""
        import torch

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        # Round to bf16 between fused ops as eager does: embeddings stay those of eager mode.
        torch._inductor.config.emulate_precision_casts = True
        torch._inductor.config.coordinate_descent_tuning = tune
        graphed = mode is not None and "reduce-overhead" in mode
        for replica in self.copies:
            for stack in _compilable_stacks(replica.model):
                for i, module in enumerate(stack):
                    compiled = torch.compile(module, dynamic=not static, mode=mode, backend=backend)
                    compiled = _OwnOutputs(compiled) if graphed else compiled
                    if static and other_shapes == "dynamic":
                        dynamic = torch.compile(module, dynamic=True, backend=backend)
                        compiled = _by_shape_module()(compiled, dynamic)
                    stack[i] = compiled
            replica.compiled = True
            replica.compile_options = dict(
                mode=mode,
                static=static,
                other_shapes=other_shapes,
                backend=backend,
                tune=tune,
                fp8=replica.fp8,
            )

    def warm_up(
        self, sizes: Sequence[tuple[int, int]] | None = None, *, every_shape: bool = True
    ) -> float:
        """Run a batch of blank pages of each (width, height) px size (default: the family's
        sizes of A4, Letter and landscape pages) on every replica, so compiling (and cuDNN's
        autotuning) is paid before real pages arrive; with dynamic graphs for other shapes,
        also a partial batch, batches of two sizes (of equal and of unequal token counts) and
        a single page. Returns seconds spent.

        Without ``every_shape``, only the shapes nearly every batch has (the pipeline batches
        pages of one grid together): with graphs of symbolic sizes, a full and a partial batch
        of one page size. Batches of mixed sizes and single pages then run eager
        (``eager_on_recompile``), and the compile is ready sooner: 2 graphs, not 6 (~40% less
        warm-up for the tiny model with inductor on a CPU; BENCHMARKS.md). What a process that
        takes over from an eager one wants (``retrieval.handover``)."""
        import torch
        from PIL import Image

        start = time.perf_counter()
        if self.compiled:
            torch.compiler.set_stance("default")
        sizes = list(sizes or self.family.warm_up_sizes(self.max_visual_tokens))
        if self.dynamic_graphs and not every_shape:
            sizes = sizes[:1]  # one graph of symbolic sizes serves every size of one grid
        dispatchers = [m for r in self.copies for m in r.model.modules() if _is_by_shape(m)]
        for d in dispatchers:
            d.learning = True  # the shapes of these full batches run the static graphs
        for size in sizes:
            pages = [Image.new("RGB", size, "white")] * self.batch_size
            for replica in self.copies:
                replica.embed_pages(pages)
        for d in dispatchers:
            d.learning = False
        if self.dynamic_graphs:  # a partial batch, batches of two sizes, a page
            first = Image.new("RGB", sizes[0])
            partial = [first] * min(self.batch_size, max(3, self.batch_size // 2 + 1))
            last = Image.new("RGB", sizes[-1])
            # Pages of unequal token counts (a US Legal page beside an A4 one) take the packed
            # attention's gather plan: inputs of their own, so a graph of their own.
            longer = Image.new("RGB", self.family.size_for(612, 1008, self.max_visual_tokens))
            # Odd counts: dynamo would tie a batch of 2 to the other sizes of 2 (duck shapes).
            n = max(1, self.batch_size // 4)
            for replica in self.copies:
                replica.embed_pages(partial)
                if not every_shape:
                    continue
                replica.embed_pages([first, last] * n + [first])
                replica.embed_pages([first, longer] * n + [first])
                replica.embed_pages([first])  # dynamo specializes sizes of 1: its own graph
        if self.compiled:
            torch.compiler.set_stance("eager_on_recompile")  # other shapes: eager, no stall
            for replica in self.copies:
                replica.traced_threads = torch.get_num_threads()
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
            fp8=settings.fp8,
        )

    # --- pages ---------------------------------------------------------------------------------

    def preprocess(self, images: Sequence[Image.Image | SharedImage]) -> PageBatch:
        """The family's preprocessing (colpali-engine's ``process_images``, on the GPU where
        the family can) of page images: model inputs, and each image's size."""
        if not images:
            raise InvalidInput("no images to embed")
        images = [load(image) for image in images]  # from shared memory where they are there
        inputs = self.family.preprocess(self.processor, images, self.device)
        inputs = self.family.complete(self.model, inputs)
        if self.device.startswith("cuda"):
            inputs = self.family.pin(inputs)
        return PageBatch(inputs, [image.size for image in images])

    def forward(self, batch: PageBatch | Any) -> torch.Tensor:
        """Device step: (batch, seq_len, dim) embeddings, zero on padding, on the device.
        Returns once the work is queued where the model allows it. Serialised by a lock."""
        import torch

        inputs = batch.inputs if isinstance(batch, PageBatch) else batch
        with self._lock, torch.inference_mode(), self._as_traced():
            return self.model(**self.family.to_device(self.processor, inputs, self.device))

    @contextmanager
    def _as_traced(self) -> Iterator[None]:
        """Run under torch's CPU thread count of the warm-up. Dynamo's graphs guard on it: a
        caller that changed it (``torch.set_num_threads``, or threadpoolctl's OpenMP limit)
        would otherwise run every block eager, silently, at 2/3 of the compiled speed (seen
        in the ingestion pipeline: 41 against 60 pages/s on an H100)."""
        import torch

        now = torch.get_num_threads()
        if self.traced_threads is None or now == self.traced_threads:
            yield
            return
        if not self._warned_threads:
            self._warned_threads = True
            log.warning(
                "torch's CPU thread count is %d; the compiled graphs were traced with %d: "
                "the forward pass runs with %d",
                now,
                self.traced_threads,
                self.traced_threads,
            )
        torch.set_num_threads(self.traced_threads)
        try:
            yield
        finally:
            torch.set_num_threads(now)

    def launch(self, batch: PageBatch) -> Launched:
        """Queue ``batch``'s forward pass and the copy of its output to the host, and return
        without waiting for them (on CUDA): the caller can prepare or finish another batch
        while the device works. ``finish`` waits and returns the pages."""
        import torch

        if not self.device.startswith("cuda"):
            return Launched(batch, self.forward(batch))
        # On this replica's device: its stream is the one the event must follow.
        with torch.cuda.device(self.device), torch.inference_mode():
            output = self.forward(batch)
            host = output.float().to("cpu", non_blocking=True)  # into pinned memory
            done = torch.cuda.Event()
            done.record()
        return Launched(batch, host, done)

    def launch_fitting(self, batch: PageBatch, images: Sequence[Image.Image]) -> Any:
        """``launch``, or on CUDA out-of-memory the batch's pages embedded at once in smaller
        batches (``embed_pages`` halves and remembers the size that fits). ``finish`` takes
        either."""
        import torch

        try:
            return self.launch(batch)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return self.embed_pages(images, max(1, len(images) // 2))

    # --- the replica contract (retrieval.replica) ----------------------------------------------

    def start(
        self, batch: PageBatch, images: Sequence[Image.Image], derive: Derive | None
    ) -> tuple[Launched | list[PageEmbedding], Derive | None]:
        """``launch_fitting``, with what ``collect`` applies to each page."""
        return self.launch_fitting(batch, images), derive

    def collect(
        self, handle: tuple[Launched | list[PageEmbedding], Derive | None]
    ) -> list[Encoded]:
        """``finish``, each page with ``derive`` of it (on this thread: the caller's)."""
        launched, derive = handle
        pages = self.finish(launched)
        return [(page, derive(page) if derive is not None else None) for page in pages]

    def finish(self, launched: Launched | list[PageEmbedding]) -> list[PageEmbedding]:
        """Wait for a launched batch (without holding the GIL) and return its pages; pages
        embedded already (``launch_fitting`` after an out-of-memory error) as they are."""
        if isinstance(launched, list):
            return launched
        if launched.done is not None:
            launched.done.synchronize()
        return self.postprocess(launched.batch, launched.output)

    def postprocess(self, batch: PageBatch, output: torch.Tensor) -> list[PageEmbedding]:
        """CPU step: unpad each row, find the visual tokens by the image token id, and have the
        family lay them out on the page grid."""
        inputs = batch.inputs
        out = output.float().cpu().numpy()  # (batch, seq_len, dim); a launched one's: no copy
        if not np.isfinite(out).all():  # never store NaN: the store cannot index it either
            raise EncoderError(
                f"{self.model_id} on {self.device} produced non-finite embeddings; try "
                "COLQWEN_DTYPE=float32 or another device"
            )
        mask = inputs["attention_mask"].bool().cpu().numpy()  # (batch, seq_len)
        ids = inputs["input_ids"].cpu().numpy()  # (batch, seq_len)
        pages = []
        for i, (row, keep, row_ids) in enumerate(zip(out, mask, ids, strict=True)):
            tokens = np.ascontiguousarray(row[keep], dtype=np.float32)  # (n_tokens, dim)
            is_visual = row_ids[keep] == self.image_token_id  # (n_tokens,)
            grid, beside = self.family.arrange(tokens[is_visual], batch.sizes[i], inputs, i)
            pages.append(
                PageEmbedding(
                    multivector=tokens,
                    grid=(int(grid.shape[0]), int(grid.shape[1])),
                    visual=grid,
                    special=np.concatenate([tokens[~is_visual], beside]),
                    visual_runs=runs(is_visual),
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
                launched = self.launch(batch)
            except Exception as exc:
                size = self._smaller_batch_after(exc, len(chunk))
                continue
            pages.extend(self.finish(launched))
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

    def query_words(self, text: str) -> dict[int, str]:
        """The rows of ``text``'s embedding that are the query's own words, and their text:
        not the prompt around them nor the augmentation tokens after them (``<|endoftext|>``
        x 10 on ColQwen2), which count in MaxSim but say nothing to a reader. Found as what
        ``text`` adds to the empty query's tokens; whitespace-only pieces left out."""
        full, bare = self._query_ids(text), self._bare_query_ids()
        start = 0
        while start < min(len(full), len(bare)) and full[start] == bare[start]:
            start += 1
        end = 0
        while end < len(bare) - start and full[-1 - end] == bare[-1 - end]:
            end += 1
        special = set(self.processor.tokenizer.all_special_ids)
        words = {}
        for row in range(start, len(full) - end):
            with self._tokenizing:
                piece = self.processor.tokenizer.decode([full[row]])
            if full[row] not in special and piece.strip():
                words[row] = piece
        return words

    def _bare_query_ids(self) -> list[int]:
        """The empty query's tokens (the prompt alone), tokenized once."""
        if self._bare_ids is None:
            self._bare_ids = self._query_ids("")
        return self._bare_ids

    def _queries(self, texts: list[str]) -> Any:
        """colpali-engine's ``process_queries``, one thread at a time."""
        with self._tokenizing:
            return self.processor.process_queries(texts)

    def _query_ids(self, text: str) -> list[int]:
        batch = self._queries([text])
        return batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()

    def embed_queries(
        self, texts: Sequence[str], batch_size: int | None = None
    ) -> list[np.ndarray]:
        """Embed queries: one float32 (n_tokens, dim) array each, augmentation tokens kept,
        padding dropped. Queries are batched only with queries of their own token count: then
        no batch is padded, and a query's vectors are those it has alone, whatever else is
        embedded with it (a left-padded model, such as ColPali, otherwise gives a padded query
        other vectors: min token cosine 0.87 on a tiny ColPali)."""
        from retrieval.search import check_query

        for text in texts:
            check_query(text)
        size = batch_size or self.query_batch_size
        texts = list(texts)
        lengths = self._queries(texts)["attention_mask"].sum(dim=1).tolist()
        by_length: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            by_length.setdefault(int(n), []).append(i)
        found: dict[int, np.ndarray] = {}
        for indices in by_length.values():
            for chunk in _chunks(indices, size):
                batch = self._queries([texts[i] for i in chunk])
                out = self.forward(batch).float().cpu().numpy()  # (batch, seq_len, dim)
                mask = batch["attention_mask"].bool().cpu().numpy()  # (batch, seq_len)
                for i, row, keep in zip(chunk, out, mask, strict=True):
                    found[i] = np.ascontiguousarray(row[keep], dtype=np.float32)
        return [found[i] for i in range(len(texts))]


def runs(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """(start, length) of each run of True in a 1-D boolean mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return tuple((int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2], strict=True))


@cache
def _own_outputs_module() -> type:
    import torch

    class OwnOutputs(torch.nn.Module):
        """A block compiled with CUDA graphs, called as one step of its own: the blocks of a
        stack share one compiled graph, whose output memory the next block's replay reuses,
        so each output is copied out before that."""

        def __init__(self, compiled: Any) -> None:
            super().__init__()
            self.compiled = compiled

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            torch.compiler.cudagraph_mark_step_begin()
            out = self.compiled(*args, **kwargs)
            return torch.utils._pytree.tree_map(
                lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out
            )

    return OwnOutputs


def _OwnOutputs(compiled: Any) -> Any:  # builds the torch module class lazily
    return _own_outputs_module()(compiled)


@cache
def _by_shape_module() -> type:
    import torch

    class ByShape(torch.nn.Module):
        """A block compiled twice: static graphs for the shapes of the warm-up's full batches
        (``learning`` while it runs them), a graph of symbolic sizes for every other shape."""

        def __init__(self, static: Any, dynamic: Any) -> None:
            super().__init__()
            self.static, self.dynamic = static, dynamic
            self.shapes: set[tuple[int, ...]] = set()
            self.learning = False

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            shape = tuple(args[0].shape) if args and hasattr(args[0], "shape") else None
            if self.learning and shape is not None:
                self.shapes.add(shape)
            run = self.static if shape in self.shapes else self.dynamic
            return run(*args, **kwargs)

    return ByShape


def _is_by_shape(module: Any) -> bool:
    return type(module).__name__ == "ByShape" and hasattr(module, "learning")


def compiles(setting: str, device: str) -> bool:
    """Whether the ``compile`` setting (on, off, auto) compiles a model on ``device``: auto
    compiles on CUDA, where the fused kernels pay for the warm-up."""
    return setting == "on" or (setting == "auto" and device.startswith("cuda"))


def _without_output_capture(model: Any) -> None:
    """Keep transformers' output-capturing hooks off ``model``. colpali-engine asks for
    ``output_hidden_states`` and reads only ``last_hidden_state`` (all families but ColPali's),
    and the hooks would hold every layer's output until the forward pass ends. dynamo cannot
    trace them either (``ContextVar.get``): it broke each compiled block into pieces, traced
    and compiled one by one (22 graphs, not 6). Marks the model's parts as hooked already
    (transformers installs the hooks lazily, at the first forward pass that asks), and
    removes hooks installed before."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module._output_capturing_hooks_installed = True
        hooks = module._forward_hooks
        for key in [k for k, hook in hooks.items() if _is_capture_hook(hook)]:
            del hooks[key]


def _is_capture_hook(hook: Any) -> bool:
    return getattr(hook, "__name__", "") == "output_capturing_hook" and "output_capturing" in (
        getattr(hook, "__module__", "") or ""
    )


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
