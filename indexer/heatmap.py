"""A similarity map drawn over its page image: what `colqwen heatmap`, the API's heatmap
endpoint and the web UI show."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from indexer.documents import DocumentService
    from retrieval.search import PageMatch, Searcher

# Dark red to yellow, as value goes FLOOR -> 1 (the web UI's legend draws the same scale).
_STOPS = np.array([[0.0, 120, 0, 40], [0.5, 230, 40, 0], [1.0, 255, 230, 40]], dtype=np.float32)
FLOOR = 0.4  # values below it are left clear: the page's weak matches do not tint it all


def overlay(page: Image.Image, grid_map: np.ndarray, *, opacity: float = 0.7) -> Image.Image:
    """``page`` with ``grid_map`` ((rows, cols), values in [0, 1]) stretched over it: each cell
    covers its patch of the page; clear below ``FLOOR``, then brighter and more opaque as the
    value rises to 1 (the page's best match)."""
    values = np.clip(np.nan_to_num(grid_map.astype(np.float32)), 0.0, 1.0)
    cells = Image.fromarray((values * 255).astype(np.uint8), mode="L")
    smooth = np.asarray(cells.resize(page.size, Image.Resampling.BILINEAR), np.float32) / 255
    strength = np.clip((smooth - FLOOR) / (1 - FLOOR), 0.0, 1.0)
    rgb = np.stack([np.interp(strength, _STOPS[:, 0], _STOPS[:, k]) for k in (1, 2, 3)], axis=-1)
    alpha = (np.sqrt(strength) * opacity * 255).astype(np.uint8)
    layer = Image.fromarray(np.dstack([rgb.astype(np.uint8), alpha]), mode="RGBA")
    return Image.alpha_composite(page.convert("RGBA"), layer).convert("RGB")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def draw_match(
    searcher: Searcher,
    documents: DocumentService,
    query: str,
    document: str,
    page: int,
    *,
    collection: str | None = None,
    token: int | None = None,
    width: int | None = None,
) -> tuple[Image.Image, PageMatch]:
    """Page ``page`` of ``document`` (its id or the start of it) with the similarity map of
    ``query`` over it (one query ``token``'s, or the combined map), and the match itself: the
    heatmap of the API, the CLI and the web UI."""
    match = searcher.explain(query, document, page, collection=collection)
    grid_map = match.explanation.map_for(token)
    name = collection or searcher.collection
    image = documents.page_image(name, match.document.doc_id, page, width=width)
    return overlay(image, grid_map), match
