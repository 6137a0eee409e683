"""Our exceptions. Each message says what went wrong and what the user can do about it.

The API maps ``NotFound`` to 404, ``Conflict`` to 409, ``InvalidInput`` and its children to
422/415, and everything else derived from ``ColqwenError`` to 400/503 (see ``app/errors.py``).
"""

from __future__ import annotations


class ColqwenError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigurationError(ColqwenError):
    """A setting or argument is invalid."""


class ModelLoadError(ColqwenError):
    """The model checkpoint cannot be found or loaded."""


class InvalidInput(ColqwenError):
    """A request or file the caller gave us cannot be used."""


class InvalidDocument(InvalidInput):
    """The file is not a document we can read (not a PDF/image, or corrupt)."""


class UnsupportedFormat(InvalidDocument):
    """The file type is not one we ingest."""


class PasswordRequired(InvalidDocument):
    """The PDF is encrypted and no (or a wrong) password was given."""


class UploadTooLarge(InvalidInput):
    """The upload is over the size limit."""


class PageTooLarge(InvalidDocument):
    """A page or an image is too large to render within the pixel budget."""


class RendererUnavailable(ColqwenError):
    """The rendering processes cannot run at all (not a problem of one file)."""


class EncoderError(ColqwenError):
    """The model failed to embed a batch (or its process exited)."""


class NotFound(ColqwenError):
    """A document, page, job or collection does not exist."""


class Conflict(ColqwenError):
    """The request conflicts with the current state (e.g. schema mismatch)."""


class StoreError(ColqwenError):
    """The vector store failed or cannot be reached."""


class StoreLocked(StoreError):
    """Another process holds the embedded store open."""


class Cancelled(ColqwenError):
    """The work was cancelled on purpose (its document deleted, or the run interrupted)."""
