"""Why a page matched: similarity maps from the stored token vectors.

MaxSim sums, over the query's tokens, each token's best dot product with the page's tokens. For
each query token we lay its dot product with every visual token out on the page's grid (the
``token_maps``), and combine them into one map: the sum over query tokens of each patch's share
of that token's best match on the page (its dot product divided by the token's MaxSim term,
clipped at 0), scaled to [0, 1]. A patch that is the best match of many query tokens is bright;
one no query token cares about is dark. Everything comes from the stored ``original`` vectors
(the page is never embedded again), so a map costs one read and one small matrix product.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from retrieval.errors import Conflict, InvalidInput, NotFound
from retrieval.models import recorded
from retrieval.store import PageStore
from retrieval.words import count


@dataclass(frozen=True)
class Explanation:
    grid: tuple[int, int]  # (rows, cols)
    token_maps: np.ndarray  # (n_query, rows, cols) float32: each query token . each patch
    combined: np.ndarray  # (rows, cols) float32 in [0, 1]
    token_scores: np.ndarray  # (n_query,) float32: each query token's MaxSim term on the page
    image_size: tuple[int, int]  # (width, height) px of the page image the grid covers

    def map_for(self, token: int | None = None) -> np.ndarray:
        """(rows, cols) in [0, 1]: the combined map, or one query token's (its dot product
        with each patch over its MaxSim term, clipped at 0)."""
        if token is None:
            return self.combined
        if not 0 <= token < len(self.token_maps):
            raise InvalidInput(
                f"token: the query has {count(len(self.token_maps), 'token')} (0 to "
                f"{len(self.token_maps) - 1})"
            )
        best = max(float(self.token_scores[token]), 1e-6)
        return np.clip(self.token_maps[token] / best, 0, 1).astype(np.float32)

    def top_tokens(self, n: int = 5, among: Collection[int] | None = None) -> list[int]:
        """Indices of the query tokens that match the page's grid best (by their best patch),
        of those ``among`` (e.g. the query's own words, ``Encoder.query_words``) if given."""
        best = self.token_maps.reshape(len(self.token_maps), -1).max(axis=1)
        order = [int(i) for i in np.argsort(-best, kind="stable")]
        return [i for i in order if among is None or i in among][:n]

    def summary(self, words: dict[int, str], *, tokens: int = 5, regions: int = 3) -> dict:
        """What the API, the CLI and the web UI show of a match: the grid, the best ``tokens``
        of the query's own ``words`` (``Encoder.query_words``; not the prompt's or padding
        tokens) with their best dot product on the page, and the ``regions`` brightest cells."""
        return {
            "grid": list(self.grid),
            "tokens": [
                {"index": i, "text": words[i], "score": round(float(self.token_maps[i].max()), 4)}
                for i in self.top_tokens(tokens, among=words)
            ],
            "regions": [
                {"row": r, "col": c, "value": round(v, 3)} for r, c, v in self.top_regions(regions)
            ],
        }

    def top_regions(self, n: int = 3) -> list[tuple[int, int, float]]:
        """The ``n`` brightest cells of the combined map: (row, col, value), 0-based."""
        flat = np.argsort(-self.combined, axis=None, kind="stable")[:n]
        cols = self.grid[1]
        return [(int(i // cols), int(i % cols), float(self.combined.flat[i])) for i in flat]


def similarity_maps(
    query: np.ndarray, tokens: np.ndarray, grid_tokens: np.ndarray, image_size: tuple[int, int]
) -> Explanation:
    """query: (n_query, dim); tokens: every stored token of the page, (n_tokens, dim);
    grid_tokens: its visual tokens on the grid, (rows, cols, dim)."""
    rows, cols, _ = grid_tokens.shape
    token_maps = np.einsum("qd,rcd->qrc", query, grid_tokens).astype(np.float32)
    token_scores = (query @ tokens.T).max(axis=1).astype(np.float32)  # MaxSim's terms
    safe = np.where(token_scores > 0, token_scores, np.inf)[:, None, None]
    shares = np.clip(token_maps, 0, None) / safe  # 0 for tokens whose best match is <= 0
    combined = shares.sum(axis=0)
    top = float(combined.max())
    combined = (combined / top if top > 0 else combined).astype(np.float32)
    return Explanation((rows, cols), token_maps, combined, token_scores, image_size)


def explain_page(
    store: PageStore, collection: str, doc_id: str, page: int, query: np.ndarray
) -> Explanation:
    """The similarity maps of ``query`` (n_query, dim) on a stored page."""
    info = store.collection(collection)
    doc = store.document(collection, doc_id)
    if not 1 <= page <= doc.page_count:
        pages = count(doc.page_count, "page")
        raise NotFound(f"document '{doc_id}' has no page {page} ({pages})")
    payload, tokens = store.page_tokens(collection, doc_id, page)
    if query.shape[1] != tokens.shape[1]:
        raise Conflict(
            f"collection '{collection}' holds {tokens.shape[1]}-d vectors; the query has "
            f"{query.shape[1]}-d ones"
        )
    grid = (int(payload["grid_rows"]), int(payload["grid_cols"]))
    image_size = (int(payload["width_px"]), int(payload["height_px"]))
    runs = payload.get("visual_runs") or _runs_before_they_were_stored(info.family, grid, tokens)
    visual = np.concatenate([tokens[start : start + n] for start, n in runs])
    grid_tokens = recorded(info.family, info.geometry).grid_tokens(visual, grid, image_size)
    return similarity_maps(query, tokens, grid_tokens, image_size)


def _runs_before_they_were_stored(
    family: str, grid: tuple[int, int], tokens: np.ndarray
) -> list[tuple[int, int]]:
    """Pages stored before their visual runs were: ColQwen2's real prompt puts 4 tokens
    before the image and 7 after it; other layouts cannot be told apart."""
    visual = grid[0] * grid[1]
    if family in ("colqwen2", "colqwen2_5") and len(tokens) == visual + 11:
        return [(4, visual)]
    raise Conflict(
        "this page was stored before similarity maps were possible for its layout: ingest its "
        "document again (delete it first) to explain its matches"
    )
