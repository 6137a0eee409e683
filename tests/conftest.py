"""Shared fixtures: a tiny ColQwen2 checkpoint written once per session, loaded through the same
code path as a real checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# OCR reads every page without text, as the tiny test PDFs are (a third of a second each): the
# tests that are about it turn it on.
os.environ.setdefault("COLQWEN_OCR", "off")

SHARED_PDFS = Path(__file__).resolve().parents[1].parent / "shared" / "pdfs"


def shared_pdfs(kind: str) -> Path:
    """``../shared/pdfs/<kind>``, or skip: a user's clone has no ../shared."""
    folder = SHARED_PDFS / kind
    if not folder.is_dir():
        pytest.skip(
            f"{folder} not found: the shared third-party PDFs sit beside the repo only on "
            "the project's machines"
        )
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-colqwen2"))


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from tests.tiny_model import write_tiny_adapter

    return write_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("tiny-adapter"))


@pytest.fixture(scope="session")
def encoder(tiny_model_dir):
    from retrieval.encoder import Encoder

    return Encoder.load(str(tiny_model_dir), device="cpu", max_visual_tokens=768, batch_size=4)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (tests/postgres.py), started once for the session."""
    from tests import postgres

    if not postgres.available():
        if os.environ.get("REQUIRE_POSTGRES"):  # CI (.ci/run): they must run there
            pytest.fail(postgres.WHY_NOT)
        pytest.skip(postgres.WHY_NOT)
    server = postgres.Server()
    yield server
    server.stop()


@pytest.fixture
def database_url(postgres_server) -> str:
    """The URL of a new, empty PostgreSQL database."""
    return postgres_server.database()
