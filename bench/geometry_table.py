"""What each family renders, records and is seen to make of a page, for checkpoints whose
image settings are not the released ones: before issue 29 (the family's default geometry,
which ingestion used) and now (the checkpoint's own, bound from its processor). Arithmetic only:
no model, no GPU; tests/test_geometry.py checks the "now" column against the processors.

    uv run python -m bench.geometry_table
"""

from __future__ import annotations

from retrieval.models import FAMILIES

CASES = [
    ("colpali", dict(side_px=224, side_tokens=16), "ColPali 224 px"),
    ("colgemma3", dict(side_px=448, side_tokens=8), "ColGemma3 448 px, 64 tokens"),
    ("colidefics3", dict(longest_edge=1280, tile_px=384, side_tokens=8), "Idefics3 1280/384"),
    ("colmodernvbert", dict(longest_edge=900, tile_px=256, side_tokens=4), "ModernVBert 900/256"),
]
PAGES = {"A4": (595, 842), "A4 landscape": (842, 595)}


def main() -> None:
    print("| checkpoint | page | before: rendered px, recorded grid (seen) | now: rendered px, "
          "grid | pixels |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, params, label in CASES:
        old, new = FAMILIES[name], FAMILIES[name].with_params(params)
        for page, (w, h) in PAGES.items():
            before, now = old.size_for(w, h, 768), new.size_for(w, h, 768)
            recorded, seen = old.grid_of(before, 768), new.grid_of(before, 768)
            grid = new.grid_of(now, 768)
            ratio = before[0] * before[1] / (now[0] * now[1])
            print(
                f"| {label} | {page} | {before[0]} x {before[1]}, {recorded[0]} x {recorded[1]} "
                f"({seen[0]} x {seen[1]}) | {now[0]} x {now[1]}, {grid[0]} x {grid[1]} | "
                f"{ratio:.1f}x fewer |"
            )


if __name__ == "__main__":
    main()
