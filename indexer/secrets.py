"""Passwords of encrypted PDFs, sealed at rest.

Page images of an encrypted PDF are rendered from its stored original long after the upload,
so its password must be kept, but never in plain text: the job table and the document record
hold a Fernet token (AES-128-CBC + HMAC-SHA256). The key is ``COLQWEN_SECRET_KEY`` (keep it in
a secret manager: then the data directory alone reveals nothing), or else a key generated once
in ``data_dir/secret.key``, readable only by its owner. A distributed deployment
(``COLQWEN_DATABASE_URL``) must set it: a job sealed on one host is unsealed on another.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from retrieval.config import Settings
from retrieval.errors import ConfigurationError, InvalidDocument

_lock = threading.Lock()


class Sealer:
    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise ConfigurationError(
                "COLQWEN_SECRET_KEY is not a Fernet key (32 url-safe base64-encoded bytes); make "
                "one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            ) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> Sealer:
        if settings.secret_key is not None:
            return cls(settings.secret_key.get_secret_value().encode())
        if settings.database_url is not None:
            # Every host must unseal what any other sealed: a key file is one host's.
            raise ConfigurationError(
                "COLQWEN_DATABASE_URL is set, so jobs move between hosts: set COLQWEN_SECRET_KEY "
                "(the same on every host) to seal passwords of encrypted PDFs; make one with: "
                "python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            )
        return cls(_key_file(settings.data_dir / "secret.key"))

    def seal(self, secret: str | None) -> str | None:
        return None if secret is None else self._fernet.encrypt(secret.encode()).decode()

    def unseal(self, token: str | None, *, name: str = "the document") -> str | None:
        if token is None:
            return None
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise InvalidDocument(
                f"{name}: its password was sealed with another secret key; set the "
                "COLQWEN_SECRET_KEY it was ingested with, or upload it again"
            ) from None


def _key_file(path: Path) -> bytes:
    """The key in ``path``, made on first use; atomic, so concurrent processes agree on one."""
    with _lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(Fernet.generate_key())
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, path)  # fails if another process linked its key first
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_bytes().strip()
