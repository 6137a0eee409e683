"""Rendered pages cross processes as handles on their pixels in shared memory: the pixels arrive
whole, exactly one copy frees them, and without room they travel the old way."""

from __future__ import annotations

import errno
import gc
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval import shared_image
from retrieval.shared_image import SharedImage, load, release, share

pytestmark = pytest.mark.skipif(
    not Path("/dev/shm").is_dir(), reason="no /dev/shm: pages travel in pipes here"
)


def page() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (924, 644, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def exists(handle: SharedImage) -> bool:
    return (Path("/dev/shm") / handle.name.lstrip("/")).exists()


def read_in_child(handle: SharedImage, out) -> None:
    out.put(np.asarray(load(handle)).tobytes())  # its borrowed copy dies with the process


def test_a_page_reaches_another_process_whole_and_its_owner_frees_it():
    image = page()
    created = share(image)
    assert isinstance(created, SharedImage) and created.size == image.size
    owned = pickle.loads(pickle.dumps(created))  # as the render pool's result reaches us
    del created
    gc.collect()
    assert exists(owned), "the creator's copy handed ownership over; it must not free it"
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    child = context.Process(target=read_in_child, args=(owned, out))
    child.start()
    pixels = out.get(timeout=60)
    child.join(timeout=60)
    assert pixels == image.tobytes()
    assert exists(owned), "a borrowed copy must not free the segment"
    release(owned)
    assert not exists(owned)
    release(owned)  # twice is harmless


def test_a_page_dropped_unembedded_frees_its_memory():
    owned = pickle.loads(pickle.dumps(share(page())))
    name = owned.name
    del owned
    gc.collect()
    assert not (Path("/dev/shm") / name.lstrip("/")).exists()


@pytest.mark.parametrize("how", ["little room", "allocation refused"])
def test_without_room_the_image_travels_itself(monkeypatch, how):
    before = set(Path("/dev/shm").iterdir())
    if how == "little room":
        monkeypatch.setattr(shared_image, "_RESERVE_BYTES", 1 << 60)
    else:

        def full(fd, offset, length):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(shared_image.os, "posix_fallocate", full)
    image = page()
    assert share(image) is image
    assert set(Path("/dev/shm").iterdir()) == before  # nothing half-made left behind
