"""Page images in shared memory: a rendered page crosses processes as a name, not its pixels.

A render process writes each page's pixels once into a shared-memory segment of its own
(``share``); the page then travels as a ``SharedImage`` handle, a few dozen bytes, to the
ingestion parent and on to the encoder process, which reads the pixels where they are
(``load``). The parent, one interpreter that every device shares, never copies the 1.8 MB of a
page through a pipe: at two GPUs its one thread that read the render pool's results was ~75%
busy doing just that, twice a page (in from a render process, out to an encoder process).

Ownership: exactly one handle owns a segment and unlinks it, on ``release()`` or when it is
garbage-collected. The handle a render process creates hands ownership over when it is
pickled, so the copy the parent receives owns it; the parent hands it on to an encoder process
(``hand_over``), which frees it once it has sent the pages' vectors back; with an in-process
encoder the parent frees it after the batch. Should a process die with a segment in flight,
multiprocessing's resource tracker, which every process of ingestion shares, unlinks it when
they have all exited.

Where shared memory is missing or short (a container's default ``/dev/shm`` is 64 MB), ``share``
returns the image unchanged and it travels in the pipe as before: the space is reserved up
front (``posix_fallocate``), so a full ``/dev/shm`` is a fallback, never a crash.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from multiprocessing import shared_memory
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

_SHM = Path("/dev/shm")
# Free shared memory a page may not take: other users of /dev/shm (NCCL, torch's DataLoader)
# need it more than a page does, which travels in the pipe instead.
_RESERVE_BYTES = 512 * 1024 * 1024
# Python 3.13 lets a process attach without registering the segment with the resource tracker.
_ATTACH = {"track": False} if sys.version_info >= (3, 13) else {}


class SharedImage:
    """An RGB image in a shared-memory segment. ``size`` is (width, height) as PIL's."""

    def __init__(self, name: str, size: tuple[int, int], *, owner: bool) -> None:
        self.name = name
        self.size = size
        self._owner = owner  # this copy unlinks the segment
        self._hand_over = False  # a pickled copy takes ownership from this one

    def hand_over(self) -> None:
        """Let the next pickled copy own the segment, this one then only borrowing it: for
        the process that reads the pixels last."""
        if self._owner:
            self._owner, self._hand_over = False, True

    def reclaim(self) -> None:
        """Free the segment after handing it over to a process that died, whether that
        process got to it or not."""
        self._owner, self._hand_over = True, False
        self.release()

    def __reduce__(self):
        owner, self._hand_over = self._hand_over, False
        return (SharedImage._rebuilt, (self.name, self.size, owner))

    @classmethod
    def _rebuilt(cls, name: str, size: tuple[int, int], owner: bool) -> SharedImage:
        return cls(name, size, owner=owner)

    def load(self) -> Image.Image:
        """The pixels, copied out of shared memory into an image of this process."""
        from PIL import Image

        segment = shared_memory.SharedMemory(self.name, **_ATTACH)
        try:
            view = Image.frombuffer("RGB", self.size, segment.buf, "raw", "RGB", 0, 1)
            image = view.copy()
            del view  # the segment cannot close while an image maps it
        finally:
            segment.close()
        return image

    def release(self) -> None:
        """Unlink the segment, if this copy owns it (others only forget it)."""
        if not self._owner:
            return
        self._owner = False
        with contextlib.suppress(FileNotFoundError):  # already gone: the tracker cleaned up
            segment = shared_memory.SharedMemory(self.name)
            segment.close()
            segment.unlink()

    def __del__(self) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"SharedImage({self.name!r}, {self.size}, owner={self._owner})"


def share(image: Image.Image) -> Image.Image | SharedImage:
    """``image``'s pixels in a new shared-memory segment, its handle handing ownership to the
    process that unpickles it; ``image`` itself where shared memory lacks the room."""
    if image.mode != "RGB" or not _SHM.is_dir():
        return image
    size = image.width * image.height * 3
    if shutil.disk_usage(_SHM).free - size < _RESERVE_BYTES:
        return image
    segment = shared_memory.SharedMemory(create=True, size=size)
    try:
        # Reserve the pages now: writing to a tmpfs that filled up meanwhile would be SIGBUS.
        os.posix_fallocate(segment._fd, 0, size)
    except OSError:
        segment.close()
        segment.unlink()
        return image
    segment.buf[:size] = image.tobytes()
    segment.close()
    handle = SharedImage(segment.name, image.size, owner=True)
    handle.hand_over()  # to the process that receives the page
    return handle


def load(image: Image.Image | SharedImage) -> Image.Image:
    """A PIL image, wherever its pixels are."""
    return image.load() if isinstance(image, SharedImage) else image


def release(image: Image.Image | SharedImage) -> None:
    """Free a shared image's segment now (its owner's copy); nothing for a PIL image."""
    if isinstance(image, SharedImage):
        image.release()
