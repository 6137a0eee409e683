"""ColQwen2 (Qwen2-VL), and the dynamic-resolution geometry the Qwen family shares.

The vision tower cuts an image into square patches (14 px on Qwen2-VL and Qwen2.5-VL, 16 px on
Qwen3-VL and Qwen3.5) and merges 2 x 2 of them into one visual token, so an image of
(token * cols) x (token * rows) pixels becomes a (rows, cols) grid of tokens, in raster order
between the prompt's 4 prefix and 7 suffix tokens. For each page we pick the largest such grid
within the visual-token budget whose aspect ratio is the page's up to rounding to whole tokens,
and render straight to that size: the processor's own resize is then a no-op, and no pixel is
rendered only to be thrown away.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from retrieval.errors import PageTooLarge
from retrieval.models.base import Family, grid_error

MIN_TOKENS = 4  # the processor's min_pixels = 4 tokens
MAX_ASPECT = 200  # the processor refuses more elongated images


@dataclass(frozen=True)
class QwenVL(Family):
    patch_px: int = 14
    merge: int = 2  # patches per token side

    @property
    def token_px(self) -> int:
        return self.patch_px * self.merge

    @property
    def geometry(self) -> str:
        return f"a grid of {self.token_px} px tokens in the page's shape, within the budget"

    def bind(self, processor: Any) -> QwenVL:
        ip = processor.image_processor
        return replace(self, patch_px=int(ip.patch_size), merge=int(ip.merge_size))

    def prepare(self, model: Any) -> None:
        """The vision tower's per-image attention as one call a block (``attention``)."""
        from retrieval.models import attention

        attention.use(model)

    def processor_kwargs(self, budget: int) -> dict[str, Any]:
        return {"max_num_visual_tokens": budget}  # else the checkpoint's 12.8 MP cap governs

    def grid_for(self, width: float, height: float, budget: int) -> tuple[int, int]:
        """The largest rows * cols <= budget with rows = round(cols * height / width)."""
        if not (width > 0 and height > 0) or not math.isfinite(width * height):
            raise PageTooLarge(f"page size {width} x {height} is not a usable size")
        aspect = height / width
        if max(aspect, 1 / aspect) > MAX_ASPECT:
            raise PageTooLarge(
                f"page is {width:g} x {height:g}: an aspect ratio beyond {MAX_ASPECT}:1 cannot "
                "be rendered as one page image"
            )
        best: tuple[int, int] | None = None
        for cols in range(1, budget + 1):
            rows = max(1, round(cols * aspect))
            if rows * cols > budget:
                break  # rows * cols never shrinks as cols grows
            if max(rows, cols) > MAX_ASPECT * min(rows, cols):
                continue  # rounding rows up to 1 can make the grid more elongated than the page
            if best is None or rows * cols > best[0] * best[1]:
                best = (rows, cols)
        if best is None or best[0] * best[1] < MIN_TOKENS:
            raise PageTooLarge(
                f"page is {width:g} x {height:g}: no grid of at least {MIN_TOKENS} tokens fits "
                f"within {budget}"
            )
        return best

    def pixels_for(self, grid: tuple[int, int]) -> tuple[int, int]:
        rows, cols = grid
        return cols * self.token_px, rows * self.token_px

    def preprocess(self, processor: Any, images: Sequence[Any], device: str) -> Any:
        """colpali-engine's ``process_images``, plus one thing: on CUDA the image processor
        runs on the GPU (~13 ms a page of CPU otherwise, more than a core at GPU speed)."""
        import torch

        on_gpu = {"device": device} if device.startswith("cuda") else {}
        with warnings.catch_warnings():
            # transformers warns on every call that the processor sets max_pixels its old way.
            warnings.filterwarnings(
                "ignore", message="Passing `min_pixels`", category=FutureWarning
            )
            batch = processor(
                text=[processor.visual_prompt_prefix] * len(images),
                images=[image.convert("RGB") for image in images],
                padding="longest",
                return_tensors="pt",
                **on_gpu,
            )
        # As colpali-engine does: one padded row of patches per image.
        grid = batch["image_grid_thw"]  # (batch, 3)
        offsets = (grid[:, 1] * grid[:, 2]).tolist()
        patches = torch.split(batch["pixel_values"], offsets)  # [(n_patches_i, patch_dim)]
        batch["pixel_values"] = torch.nn.utils.rnn.pad_sequence(patches, batch_first=True)
        return batch

    def complete(self, model: Any, inputs: Any) -> Any:
        """The 3-D rotary positions (M-RoPE) of the batch, computed on the CPU here: inside
        the forward pass, transformers computes them in a Python loop of GPU syncs after the
        vision tower, with the GPU idle meanwhile. Same positions."""
        rope_index = getattr(model, "get_rope_index", None)
        if rope_index is None or "position_ids" in inputs or "mm_token_type_ids" not in inputs:
            return inputs
        keys = ("input_ids", "mm_token_type_ids", "image_grid_thw", "attention_mask")
        cpu = {k: inputs[k].cpu() for k in keys}
        inputs["position_ids"], _ = rope_index(
            cpu["input_ids"],
            mm_token_type_ids=cpu["mm_token_type_ids"],
            image_grid_thw=cpu["image_grid_thw"],
            attention_mask=cpu["attention_mask"],
        )
        return inputs

    def arrange(
        self, visual: np.ndarray, image_size: tuple[int, int], inputs: dict[str, Any], index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raster order over (grid_h, grid_w) / merge, as ``image_grid_thw`` says."""
        _, grid_h, grid_w = (int(v) for v in inputs["image_grid_thw"][index])
        rows, cols = grid_h // self.merge, grid_w // self.merge
        if len(visual) != rows * cols:
            raise grid_error(self.name, len(visual), f"{rows}x{cols}")
        return visual.reshape(rows, cols, -1), visual[:0]


COLQWEN2 = QwenVL(
    "colqwen2",
    "ColQwen2",
    "ColQwen2Processor",
    trained_budget=768,
    prompt_tokens=11,
    model_types=("qwen2_vl",),
    examples=("vidore/colqwen2-v1.0", "vidore/colqwen2-v0.1"),
)
