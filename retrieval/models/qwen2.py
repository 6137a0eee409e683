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
import weakref
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
    min_tokens: int = MIN_TOKENS  # the processor's min_pixels, in tokens
    max_tokens: int = 0  # the processor's max_pixels, in tokens (0: only the budget caps)

    bound = ("patch_px", "merge", "min_tokens", "max_tokens")

    @property
    def token_px(self) -> int:
        return self.patch_px * self.merge

    @property
    def geometry(self) -> str:
        return f"a grid of {self.token_px} px tokens in the page's shape, within the budget"

    def bind(self, processor: Any) -> QwenVL:
        ip = processor.image_processor
        token_px = int(ip.patch_size) * int(ip.merge_size)
        low, high = _pixel_bounds(ip)
        return replace(
            self,
            patch_px=int(ip.patch_size),
            merge=int(ip.merge_size),
            min_tokens=max(MIN_TOKENS, math.ceil(low / token_px**2)),
            max_tokens=high // token_px**2,
        )

    def prepare(self, model: Any) -> None:
        """The vision tower's per-image attention as one call a block (``attention``), its
        patch embedding as one matmul, and the placeholder check that reads a count back from
        the device moved to ``complete``."""
        from retrieval.models import attention

        visual = getattr(model, "visual", None) or getattr(
            getattr(model, "model", None), "visual", None
        )
        attention.use(visual)
        _patch_embedding_as_matmul(visual)
        _check_placeholders_on_host(model)

    def processor_kwargs(self, budget: int) -> dict[str, Any]:
        return {"max_num_visual_tokens": budget}  # else the checkpoint's 12.8 MP cap governs

    def size_for(self, width: float, height: float, budget: int) -> tuple[int, int]:
        return self.pixels_for(self._best_grid(width, height, budget))

    def _best_grid(self, width: float, height: float, budget: int) -> tuple[int, int]:
        """The largest rows * cols <= budget with rows = round(cols * height / width)."""
        if not (width > 0 and height > 0) or not math.isfinite(width * height):
            raise PageTooLarge(f"page size {width} x {height} is not a usable size")
        aspect = height / width
        if max(aspect, 1 / aspect) > MAX_ASPECT:
            raise PageTooLarge(
                f"page is {width:g} x {height:g}: an aspect ratio beyond {MAX_ASPECT}:1 cannot "
                "be rendered as one page image"
            )
        budget = self.budget(budget)
        best: tuple[int, int] | None = None
        for cols in range(1, budget + 1):
            rows = max(1, round(cols * aspect))
            if rows * cols > budget:
                break  # rows * cols never shrinks as cols grows
            if max(rows, cols) > MAX_ASPECT * min(rows, cols):
                continue  # rounding rows up to 1 can make the grid more elongated than the page
            if best is None or rows * cols > best[0] * best[1]:
                best = (rows, cols)
        if best is None or best[0] * best[1] < self.min_tokens:
            raise PageTooLarge(
                f"page is {width:g} x {height:g}: no grid of at least {self.min_tokens} tokens "
                f"fits within {budget}"
            )
        return best

    def budget(self, budget: int) -> int:
        """Visual tokens a page may have: ``budget``, or fewer where the processor caps them."""
        return min(budget, self.max_tokens) if self.max_tokens else budget

    def processed_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The image processor's ``smart_resize``: whole tokens, within its pixel bounds
        (transformers' arithmetic, mirrored: rendering runs where torch is not imported)."""
        width, height = size
        token = self.token_px
        low, high = self.min_tokens * token**2, (self.max_tokens or 1 << 40) * token**2
        h, w = round(height / token) * token, round(width / token) * token
        if h * w > high:
            beta = math.sqrt(height * width / high)
            h = max(token, math.floor(height / beta / token) * token)
            w = max(token, math.floor(width / beta / token) * token)
        elif h * w < low:
            beta = math.sqrt(low / (height * width))
            h, w = math.ceil(height * beta / token) * token, math.ceil(width * beta / token) * token
        return w, h

    def grid_of(self, size: tuple[int, int], budget: int) -> tuple[int, int]:
        width, height = self.processed_size(size)
        return height // self.token_px, width // self.token_px

    def pixels_for(self, grid: tuple[int, int]) -> tuple[int, int]:
        rows, cols = grid
        return cols * self.token_px, rows * self.token_px

    def preprocess(self, processor: Any, images: Sequence[Any], device: str) -> Any:
        """colpali-engine's ``process_images``, split so that nothing here touches the device:
        the prompt of each grid is tokenized once and reused, and the pixels stay uint8, one
        stack per image size (pinned for a fast copy when ``device`` is a GPU). ``to_device``
        does the rest (rescale, normalize, patchify: the image processor's own steps) where the
        model runs. Images of another size than their grid's are resized here first, by the
        image processor's own resize."""
        import torch

        ip = processor.image_processor
        by_size: dict[tuple[int, int], list[int]] = {}
        arrays = []
        for i, image in enumerate(images):
            array = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
            if _target_size(ip, array.shape[:2], self.token_px) != array.shape[:2]:
                chw = torch.from_numpy(array.copy()).permute(2, 0, 1)[None]
                resized = ip.resize(chw, size=ip.size, resample=ip.resample, factor=self.token_px)
                array = resized[0].permute(1, 2, 0).numpy()
            arrays.append(array)
            by_size.setdefault(array.shape[:2], []).append(i)
        pin = device.startswith("cuda")
        groups = []
        for size, indices in by_size.items():
            stack = torch.empty((len(indices), *size, 3), dtype=torch.uint8, pin_memory=pin)
            for row, i in enumerate(indices):
                stack[row].numpy()[...] = arrays[i]  # one copy, straight into the stack
            groups.append((indices, stack))
        rows = [_prompt(processor, array.shape[:2]) for array in arrays]
        batch = _left_padded(rows, processor.tokenizer.pad_token_id)
        sizes = [array.shape[:2] for array in arrays]
        grids = [(1, h // self.patch_px, w // self.patch_px) for h, w in sizes]
        batch["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
        batch["pixel_groups"] = groups
        return batch

    def to_device(self, processor: Any, inputs: dict[str, Any], device: str) -> dict[str, Any]:
        """Copy the inputs over without waiting (``non_blocking``), and turn the uint8 pixel
        stacks into the model's patches there: rescaled and normalized as the image processor
        does (to float32, minus mean, over std, with its fused constants) and cut by its own
        ``patchify``, one padded row of patches per image as colpali-engine gives them. The
        grid and sequence bounds stay on the host: the model reads them there, without a sync."""
        import torch

        ip = processor.image_processor
        out = super().to_device(processor, inputs, device)
        groups = out.pop("pixel_groups", None)
        if groups is None:
            return out
        mean, std = _normalization(ip, device)
        patches: list[Any] = [None] * len(inputs["input_ids"])
        for indices, stack in groups:
            pixels = stack.to(device, non_blocking=True).permute(0, 3, 1, 2)  # (n, 3, H, W)
            pixels = pixels.to(torch.float32).sub_(mean).div_(std)
            flat, _, _ = ip.patchify(
                pixels,
                patch_size=self.patch_px,
                merge_size=self.merge,
                temporal_patch_size=ip.temporal_patch_size,
            )  # (n, patches, patch_dim)
            for row, i in enumerate(indices):
                patches[i] = flat[row]
        if len(groups) == 1:
            out["pixel_values"] = flat
        else:
            out["pixel_values"] = torch.nn.utils.rnn.pad_sequence(patches, batch_first=True)
        return out

    def host_inputs(self) -> frozenset[str]:
        return _HOST_INPUTS

    def complete(self, model: Any, inputs: Any) -> Any:
        """What the forward pass would otherwise derive from the inputs with the GPU waiting,
        computed on the host beforehand (in the preprocessing threads), by transformers' own
        helpers: the 3-D rotary positions of the text (M-RoPE; a Python loop of syncs after the
        vision tower otherwise), and the vision tower's patch positions, sequence bounds,
        windows and position-embedding taps (``.tolist()`` syncs otherwise). Also checks, here
        where it costs no sync, that each image's tokens match its grid: the model's own check
        reads a count back from the device."""
        keys = ("input_ids", "mm_token_type_ids", "image_grid_thw", "attention_mask")
        if "mm_token_type_ids" not in inputs or "image_grid_thw" not in inputs:
            return inputs
        cpu = {k: inputs[k].cpu() for k in keys}
        grid = cpu["image_grid_thw"]
        inputs["image_grid_thw"] = grid
        expected = int((grid.prod(-1) // self.merge**2).sum())
        found = int((cpu["input_ids"] == self.image_token_id(model)).sum())
        if found != expected:
            raise grid_error(self.name, found, f"{expected} (the batch's image grids)")
        rope_index = getattr(model, "get_rope_index", None)
        if rope_index is not None and "position_ids" not in inputs:
            inputs["position_ids"], _ = rope_index(
                cpu["input_ids"],
                mm_token_type_ids=cpu["mm_token_type_ids"],
                image_grid_thw=grid,
                attention_mask=cpu["attention_mask"],
            )
        inputs.update(_vision_inputs(model, grid))
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


# Inputs the model reads on the host: the grids (split sizes, colpali-engine's unpadding) and
# the packed attention's sequence bounds. Everything else goes to the device.
_HOST_INPUTS = frozenset({"image_grid_thw", "image_cu_seqlens", "image_cu_window_seqlens"})
_prompts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_norms: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # processor -> device -> ...


def _target_size(ip: Any, size: tuple[int, int], factor: int) -> tuple[int, int]:
    """(height, width) the image processor resizes an image of ``size`` to."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    low, high = _pixel_bounds(ip)
    return smart_resize(*size, factor=factor, min_pixels=low, max_pixels=high)


def _pixel_bounds(ip: Any) -> tuple[int, int]:
    """(min_pixels, max_pixels) an image processor resizes images to be within."""
    size = ip.size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    return int(get("shortest_edge")), int(get("longest_edge"))


def _prompt(processor: Any, size: tuple[int, int]) -> dict[str, Any]:
    """The processor's text inputs (input_ids, attention_mask, mm_token_type_ids; each (1, n))
    for one image of ``size`` (height, width), computed once per processor and size."""
    from PIL import Image

    cache = _prompts.setdefault(processor, {})
    if size not in cache:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="Passing `min_pixels`", category=FutureWarning
            )
            blank = Image.new("RGB", (size[1], size[0]))
            batch = processor(
                text=[processor.visual_prompt_prefix], images=[blank], return_tensors="pt"
            )
        cache[size] = {k: batch[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    return cache[size]


def _left_padded(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Rows of text inputs as one batch, left-padded to the longest as colpali-engine's
    processor pads (``padding="longest"``, its tokenizer's ``padding_side="left"``)."""
    import torch

    longest = max(r["input_ids"].shape[1] for r in rows)
    batch = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("mm_token_type_ids", 0)):
        out = torch.full((len(rows), longest), fill, dtype=rows[0][key].dtype)
        for i, r in enumerate(rows):
            n = r[key].shape[1]
            out[i, longest - n :] = r[key][0]
        batch[key] = out
    return batch


def _normalization(ip: Any, device: str) -> tuple[Any, Any]:
    """The image processor's fused mean and std (its ``_fuse_mean_std_and_rescale_factor``:
    mean / rescale_factor, std / rescale_factor), as (3, 1, 1) tensors on ``device``; built
    once, since building them on the device waits for it."""
    import torch

    cache = _norms.setdefault(ip, {})
    if device not in cache:
        if not (ip.do_rescale and ip.do_normalize):
            raise ValueError("the image processor neither rescales nor normalizes: unsupported")
        fuse = 1.0 / ip.rescale_factor
        mean = torch.tensor(ip.image_mean) * fuse
        std = torch.tensor(ip.image_std) * fuse
        cache[device] = (mean.view(-1, 1, 1).to(device), std.view(-1, 1, 1).to(device))
    return cache[device]


def _vision_inputs(model: Any, grid: Any) -> dict[str, Any]:
    """The vision tower's own derived inputs for ``grid`` (on the host), by transformers'
    helpers, under the names its ``get_image_features`` takes them (``image_`` + the name)."""
    from transformers import vision_utils as vu
    from transformers.utils.generic import get_max_seqlen

    from retrieval.models import attention

    visual = model.visual
    merge = visual.spatial_merge_size
    out = {"image_position_ids": vu.get_vision_position_ids(grid, merge)}
    if visual.config._attn_implementation == attention.NAME:  # host bounds: packed attention
        cu_seqlens, longest = vu.get_vision_attention_seqlens(grid, visual.config)
        out |= {"image_cu_seqlens": cu_seqlens, "image_max_seqlen": longest}
        out |= attention.layout_inputs("image_packed", cu_seqlens, longest)
        if hasattr(visual, "window_size"):  # Qwen2.5-VL: attention within windows
            window_index, cu_window = vu.get_vision_window_index(
                grid,
                spatial_merge_size=merge,
                window_size=visual.window_size,
                patch_size=visual.patch_size,
            )
            longest_window = get_max_seqlen(cu_window, visual.config)
            out |= {
                "image_window_index": window_index,
                "image_cu_window_seqlens": cu_window,
                "image_max_window_seqlen": longest_window,
            }
            out |= attention.layout_inputs("image_window_packed", cu_window, longest_window)
    if hasattr(visual, "num_grid_per_side"):  # Qwen3-VL, 3.5: interpolated position embeddings
        indices, weights = vu.get_vision_interpolation_indices_and_weights(
            grid,
            num_grid_per_side=visual.num_grid_per_side,
            mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners,
            spatial_merge_size=visual.config.spatial_merge_size,
        )
        out |= {"image_interp_indices": indices, "image_interp_weights": weights}
    return out


def _check_placeholders_on_host(model: Any) -> None:
    """Replace the model's ``get_placeholder_mask`` by the same masks without its count check,
    which reads the count back from the device (and formats it into a message even when the
    check passes); ``QwenVL.complete`` checks the counts on the host instead."""
    import types

    original = model.get_placeholder_mask
    image_id, video_id = model.config.image_token_id, model.config.video_token_id

    def get_placeholder_mask(
        self: Any,
        input_ids: Any,
        inputs_embeds: Any,
        image_features: Any = None,
        video_features: Any = None,
    ) -> tuple[Any, Any]:
        if input_ids is None:
            return original(input_ids, inputs_embeds, image_features, video_features)
        image = (input_ids == image_id).unsqueeze(-1).to(inputs_embeds.device)
        video = (input_ids == video_id).unsqueeze(-1).to(inputs_embeds.device)
        return image, video

    model.get_placeholder_mask = types.MethodType(get_placeholder_mask, model)


def _patch_embedding_as_matmul(visual: Any) -> bool:
    """Run a vision tower's patch embedding, a 3-D convolution whose kernel is its stride and
    covers exactly one input row (a patch, flattened as channels x frames x rows x columns), as
    the matmul it is: the same products and sums. cuDNN ran it as an implicit-GEMM convolution
    at ~21 TFLOP/s, 12.5 ms of a 521 ms batch of 32 A4 pages on an H100; as a matmul (0.3 TFLOP
    a batch) the batch took 15 ms less in all (BENCHMARKS.md). True if replaced."""
    import types

    import torch

    embed = getattr(visual, "patch_embed", None)
    conv = getattr(embed, "proj", None)
    if not isinstance(conv, torch.nn.Conv3d) or not (
        conv.kernel_size == conv.stride
        and conv.padding == (0, 0, 0)
        and conv.dilation == (1, 1, 1)
        and conv.groups == 1
    ):
        return False
    width = conv.in_channels * math.prod(conv.kernel_size)

    def forward(self: Any, hidden_states: Any) -> Any:
        weight = self.proj.weight  # (embed, channels, frames, rows, columns)
        rows = hidden_states.reshape(-1, width).to(dtype=weight.dtype)
        return torch.nn.functional.linear(
            rows, weight.reshape(weight.shape[0], width), self.proj.bias
        )

    embed.forward = types.MethodType(forward, embed)
    return True
