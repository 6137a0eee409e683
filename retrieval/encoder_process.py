"""An encoder in a process of its own, one per device, for ingestion.

The thread that launches a forward pass must keep the device fed, and in one interpreter it
shares the GIL with everything else ingestion does (receiving rendered pages, batching,
computing and writing the stored vectors): each of those holds it for milliseconds at a time,
and every kernel launch waits its turn. In a process of its own the launching thread competes
only with the preprocessing of the next batch and the finishing of the last one, and several
devices no longer share one interpreter at all.

``EncoderProcess`` is a replica (``retrieval.replica``: ``preprocess``, ``start``,
``collect``), so the pipeline drives one the same way as an in-process ``Encoder``. Inside,
one thread preprocesses batches as they arrive, one only launches them, and one waits for
each, derives its pages' stored vectors when asked and sends them back, so the device always
has the next batch queued. Pages go
in through a pipe as handles on their pixels in shared memory (``retrieval.shared_image``;
a PIL image travels pickled), and ``PageEmbedding``s come back through one (0.8 MB a page).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import multiprocessing
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.config import Settings
from retrieval.cpu_threads import one_blas_thread_per_op
from retrieval.errors import EncoderError, ModelLoadError
from retrieval.replica import Derive, Encoded
from retrieval.shared_image import SharedImage, release

if TYPE_CHECKING:
    from PIL import Image

    from retrieval.encoder import Encoder
    from retrieval.types import PageEmbedding

log = logging.getLogger(__name__)

_POLL_S = 0.5  # how often a wait checks that the process is still alive
# A batch's pages come back as ~13 MB of pickles: through Linux's default 64 KB pipe, some 200
# turns of each process waiting for the other.
_PIPE_BYTES = (4 << 20, 1 << 20)  # what to ask for; the most an unprivileged user gets
_STOP = "stop"


class Submitted:
    """A batch sent to the process; its pages come back in submission order."""

    def __init__(self, images: Sequence[Image.Image]) -> None:
        self.images = list(images)


class EncoderProcess:
    """A model on one device, in a child process (``spawn``), built by ``factory``.

    ``factory`` is a picklable callable returning a loaded ``Encoder`` (for example
    ``functools.partial(Encoder.load, path, device="cuda:1")``); the child compiles and warms
    it up as the parent would (``every_shape``: ``Encoder.warm_up``'s). Not thread-safe: one
    pipeline thread drives it."""

    # Batches in flight: the process prepares the next ones while the device runs one, and the
    # parent's turns (receiving pages, sending the next batch) do not leave the device idle.
    lookahead = 3

    def __init__(
        self,
        factory: Callable[[], Encoder],
        device: str,
        *,
        warm_up: bool = True,
        wait: bool = True,
        compile_cache: Path | None = None,
        every_shape: bool = True,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.device = device
        self._requests = context.Queue(maxsize=self.lookahead)
        self._responses = context.Queue()
        _widen(self._responses)
        self._process = context.Process(
            target=_serve,
            args=(factory, warm_up, every_shape, compile_cache, self._requests, self._responses),
            name=f"encoder-{device}",
            daemon=True,
        )
        self._process.start()
        self._handed: collections.deque[list[SharedImage]] = collections.deque()  # in flight
        self.warm_up_s = 0.0
        self.cache: str | None = None  # "loaded" or "saved": the compile cache's part in it
        self.ready = False
        if wait:
            self.wait_ready()

    @classmethod
    def start_many(
        cls,
        factory: Callable[[str], Encoder],
        devices: Sequence[str],
        *,
        warm_up: bool = True,
        wait: bool = True,
        compile_cache: Path | None = None,
        every_shape: bool = True,
    ) -> list[EncoderProcess]:
        """One process per device, ``factory(device)`` building each model; they load (and
        compile) side by side. Returns once all are ready (``wait``); stops them all if one
        fails."""
        processes = [
            cls(
                functools.partial(factory, d),
                d,
                warm_up=warm_up,
                wait=False,
                compile_cache=compile_cache,
                every_shape=every_shape,
            )
            for d in devices
        ]
        try:
            for process in processes if wait else ():
                process.wait_ready()
        except BaseException:
            for process in processes:
                process.close()
            raise
        return processes

    def wait_ready(self) -> None:
        """Wait until the model is loaded (and warmed up); ``ModelLoadError`` if it failed."""
        self._became(*self._receive())

    def poll_ready(self) -> bool:
        """Whether the model is loaded (and warmed up), without waiting; ``ModelLoadError`` if
        it failed. Nothing else arrives before: the process takes no batch until then."""
        if self.ready:
            return True
        try:
            message = self._responses.get_nowait()
        except queue.Empty:
            self._check_alive()
            return False
        self._became(*message)
        return True

    def _became(self, kind: str, payload: Any) -> None:
        if kind != "ready":
            self.close()
            raise ModelLoadError(
                f"the encoder process for {self.device} could not start: {payload}"
            )
        self.warm_up_s, self.cache = payload["warm_up_s"], payload["cache"]
        self.ready = True

    @property
    def in_flight(self) -> int:
        """Batches sent and not yet collected."""
        return len(self._handed)

    # --- the pipeline's interface --------------------------------------------------------------

    def preprocess(self, images: Sequence[Image.Image]) -> Submitted:
        """Nothing to do here: the process preprocesses the images itself."""
        return Submitted(images)

    def start(
        self, batch: Submitted, images: Sequence[Image.Image], derive: Derive | None
    ) -> Submitted:
        """Send ``batch`` to the process, with ``derive`` (picklable: the store's
        ``derived_vectors`` for the collection) for it to apply to each page; returns once it is
        queued there. Pages' shared memory goes with it: the process frees it once their vectors
        are sent back. The process itself falls back to smaller batches on out-of-memory."""
        if not self.ready:  # started without waiting: its "ready" comes first
            self.wait_ready()
        shared = [image for image in batch.images if isinstance(image, SharedImage)]
        for image in shared:
            image.hand_over()
        self._handed.append(shared)
        while True:
            try:
                self._requests.put((batch.images, derive), timeout=_POLL_S)
                return batch
            except queue.Full:
                self._check_alive()

    def collect(self, handle: Submitted) -> list[Encoded]:
        """The pages of the oldest batch sent and not yet collected, each with ``derive`` of
        it."""
        kind, payload = self._receive()
        self._handed.popleft()  # freed by the process, whatever became of the batch
        if kind == "error":
            raise EncoderError(f"the encoder process for {self.device}: {payload}")
        pages, derived = payload
        return list(zip(pages, derived or [None] * len(pages), strict=True))

    def embed_pages(
        self, images: Sequence[Image.Image], batch_size: int | None = None
    ) -> list[PageEmbedding]:
        return [page for page, _ in self.collect(self.start(self.preprocess(images), images, None))]

    # --- life cycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the process (it finishes the batch in hand first); kill it if it hangs, or at
        once while it still loads or compiles (a run that ended before its compiled model was
        ready must not wait for it)."""
        if self._process.is_alive() and not self.ready:
            self._process.kill()
            self._process.join()
        if self._process.is_alive():
            with contextlib.suppress(queue.Full):  # busy with a full queue: killed below
                self._requests.put(_STOP, timeout=10)
            self._process.join(timeout=30)
        if self._process.is_alive():
            log.warning("encoder process for %s did not stop; killing it", self.device)
            self._process.kill()
            self._process.join()
        self._reclaim()
        # Batches still on their way to a process that is gone will never be read: the queue's
        # feeder thread must not hold this interpreter's exit waiting to deliver them.
        self._requests.cancel_join_thread()
        self._requests.close()
        self._responses.close()

    def __enter__(self) -> EncoderProcess:
        return self

    def _reclaim(self) -> None:
        """Free the shared memory of the batches a process that is gone never sent back."""
        while self._handed:
            for image in self._handed.popleft():
                image.reclaim()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _receive(self) -> tuple[str, Any]:
        while True:
            try:
                return self._responses.get(timeout=_POLL_S)
            except queue.Empty:
                self._check_alive()

    def _check_alive(self) -> None:
        if not self._process.is_alive():
            self._reclaim()
            raise EncoderError(
                f"the encoder process for {self.device} exited (code {self._process.exitcode})"
            )


def _widen(pipe: multiprocessing.Queue) -> None:
    """Enlarge a queue's pipe where the OS allows it (Linux), so a batch crosses in few turns."""
    import fcntl

    if not hasattr(fcntl, "F_SETPIPE_SZ"):
        return
    for size in _PIPE_BYTES:
        try:
            fcntl.fcntl(pipe._writer.fileno(), fcntl.F_SETPIPE_SZ, size)
            return
        except OSError as exc:  # above /proc/sys/fs/pipe-max-size, for a user without rights
            log.debug("cannot give a pipe %d bytes: %s", size, exc)


def process_devices(settings: Settings) -> list[str] | None:
    """The devices to run an encoder process on for ingestion, or None to run the model in
    this process (``encoder_processes``: auto = on for GPUs, where the launching thread must
    not wait for the GIL behind rendering, batching and storing: one H200, 42 -> 48 pages/s,
    BENCHMARKS.md)."""
    from retrieval.encoder import resolve_devices

    if settings.encoder_processes == "off":
        return None
    devices = resolve_devices(settings.device)
    if settings.encoder_processes == "auto" and not devices[0].startswith("cuda"):
        return None
    return devices


class IngestEncoder:
    """The encoder ingestion runs on, as settings say: the model loaded here (replicated over
    the devices in threads, compiled and warmed up), or one process per device
    (``process_devices``), the model here then only answering what the pipeline asks of it
    (its family, size, processor), without its weights (``Encoder.structure``). A compiled
    model is warmed up from the compile cache's files when there are
    (``retrieval.compile_cache``); with ``compile_handover`` each device starts eager and is
    handed over to its compiled process once that is ready (``retrieval.handover``).

        with IngestEncoder(settings, on_status=print) as encoder: ...

    ``start()`` first, and the processes load while the caller prepares the rest (a store, the
    render processes); entering waits for them. Processes stop on exit."""

    def __init__(self, settings: Settings, on_status: Callable[[str], Any] | None = None):
        from retrieval.encoder import compiles, resolve_devices

        self.settings = settings
        self._say = on_status or (lambda message: None)
        self.devices = process_devices(settings)
        compiled = compiles(settings.compile, (self.devices or resolve_devices(settings.device))[0])
        self.handover = compiled and self.devices is not None and settings.compile_handover
        # Whether the first page waits for a compile (no handover): worth telling the user.
        self.compiles_first = compiled and not self.handover
        self._load = dict(
            dtype=settings.dtype,
            max_visual_tokens=settings.max_visual_tokens,
            family=settings.model_family,
            batch_size=settings.batch_size,
            fp8=settings.fp8,
        )
        self._processes: list[EncoderProcess] = []
        self._successors: list[EncoderProcess] = []
        self._replicas: list[Any] = []
        self._encoder: Encoder | None = None

    def start(self) -> IngestEncoder:
        """Start the device processes loading (and compiling), without waiting for them."""
        if self.devices is None or self._processes:
            return self
        cache = self.settings.compile_cache_dir
        factory = functools.partial(_load_on, self.settings.model, **self._load)
        first = functools.partial(
            factory, compile="off" if self.handover else self.settings.compile
        )
        self._processes = EncoderProcess.start_many(
            first, self.devices, wait=False, compile_cache=cache
        )
        if self.handover:  # loading side by side with the eager ones, then compiling
            # the shapes nearly every batch has; the rare ones run eager (Encoder.warm_up)
            compiling = functools.partial(factory, compile="on")
            self._successors = EncoderProcess.start_many(
                compiling, self.devices, wait=False, compile_cache=cache, every_shape=False
            )
        return self

    def __enter__(self) -> Encoder:
        try:
            return self._ready()
        except BaseException:
            self.close()
            raise

    def _ready(self) -> Encoder:
        from retrieval import compile_cache
        from retrieval.encoder import Encoder

        settings = self.settings
        if self.devices is None:
            encoder = Encoder.from_settings(settings)
            if encoder.compiled:
                seconds = compile_cache.warm_up(encoder, settings.compile_cache_dir).seconds
                self._say(f"model compiled and warmed up in {seconds:.0f} s")
            self._encoder = encoder
            return encoder
        self.start()
        # Here meanwhile, the model without its weights: what the pipeline asks of it.
        encoder = Encoder.structure(
            settings.model,
            max_visual_tokens=settings.max_visual_tokens,
            family=settings.model_family,
            batch_size=settings.batch_size,
        )
        for process in self._processes:
            process.wait_ready()
        warm_up_s = max(p.warm_up_s for p in self._processes)
        warmed = f"; compiled and warmed up in {warm_up_s:.0f} s" if warm_up_s else ""
        if self.handover:
            from retrieval.handover import Handover

            warmed = "; compiling in a second process per device, to take over when warmed up"
            pairs = zip(self._processes, self._successors, strict=True)
            self._replicas = [Handover(e, c, self._say) for e, c in pairs]
        else:
            self._replicas = list(self._processes)
        devices = ", ".join(self.devices)
        self._say(f"model loaded in {len(self._processes)} process(es): {devices}{warmed}")
        encoder.replicas = self._replicas
        self._encoder = encoder
        return encoder

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process (at once, those still loading or compiling)."""
        if self._encoder is not None:
            self._encoder.replicas = [self._encoder]
        for replica in self._replicas or self._processes + self._successors:
            replica.close()
        self._replicas, self._processes, self._successors = [], [], []


def ingest_encoder(
    settings: Settings, on_status: Callable[[str], Any] | None = None
) -> IngestEncoder:
    """``IngestEncoder(settings, on_status)``: ``with ingest_encoder(settings) as encoder``."""
    return IngestEncoder(settings, on_status)


def _load_on(model: str, device: str, **kwargs: Any) -> Encoder:
    from retrieval.encoder import Encoder

    return Encoder.load(model, device=device, **kwargs)


def _serve(
    factory: Callable[[], Encoder],
    warm_up: bool,
    every_shape: bool,
    compile_cache: Path | None,
    requests: multiprocessing.Queue,
    responses: multiprocessing.Queue,
) -> None:
    """The child: build the encoder, then three threads, each feeding the next: one receives
    and preprocesses batches, this one only launches them (so nothing on the host, such as
    allocating pinned memory for a batch of a new size, delays the device's next batch), and
    one waits for each and sends its pages back, in order."""
    import sys

    from retrieval import compile_cache as kernels

    try:
        encoder = factory()
        warmed = kernels.WarmUp(0.0)
        if warm_up and encoder.compiled:
            warmed = kernels.warm_up(encoder, compile_cache, every_shape=every_shape)
    except BaseException as exc:  # the parent reports it; nothing else can
        responses.put(("error", f"{type(exc).__name__}: {exc}"))
        return
    cache = "loaded" if warmed.loaded else "saved" if warmed.saved else None
    responses.put(("ready", {"warm_up_s": warmed.seconds, "cache": cache}))
    sys.setswitchinterval(0.001)  # the launching thread gets the GIL back sooner
    prepared: queue.Queue = queue.Queue(maxsize=2)
    launched: queue.Queue = queue.Queue(maxsize=1)  # one batch queued behind the running one
    workers = [
        threading.Thread(target=_prepare_each, args=(encoder, requests, prepared), daemon=True),
        threading.Thread(target=_finish_each, args=(encoder, launched, responses), daemon=True),
    ]
    # As in the parent's pipeline: one thread per numeric op beside the device's work.
    with one_blas_thread_per_op(on_gpu=encoder.device.startswith("cuda")):
        for worker in workers:
            worker.start()
        while (item := prepared.get()) is not None:
            launched.put(_launch(encoder, *item))
        launched.put(None)
        for worker in workers:
            worker.join()


def _prepare_each(encoder: Encoder, requests: multiprocessing.Queue, prepared: queue.Queue):
    while (request := requests.get()) != _STOP:
        images, derive = request
        try:
            prepared.put((images, encoder.preprocess(images), derive))
        except Exception as exc:
            prepared.put((images, exc, derive))
    prepared.put(None)


def _launch(encoder: Encoder, images: list[Image.Image], batch: Any, derive: Any) -> Any:
    """Launch a batch (``launch_fitting``: smaller batches on CUDA out-of-memory); any failure
    goes back to the parent as the batch's result."""
    if isinstance(batch, Exception):
        return batch, derive, images
    try:
        return encoder.launch_fitting(batch, images), derive, images
    except Exception as exc:
        return exc, derive, images


def _finish_each(encoder: Encoder, launched: queue.Queue, responses: multiprocessing.Queue):
    while (item := launched.get()) is not None:
        handle, derive, images = item
        try:
            if isinstance(handle, Exception):
                raise handle
            pages = encoder.finish(handle)
            derived = [derive(page) for page in pages] if derive is not None else None
            responses.put(("pages", (pages, derived)))
        except Exception as exc:
            responses.put(("error", f"{type(exc).__name__}: {exc}"))
        for image in images:  # the pages' shared memory, once the parent has their vectors
            release(image)
