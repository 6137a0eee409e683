"""What a model family tells the rest of the code base."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

# Page sizes in points that ingestion warms a compiled model up for: A4, US Letter, landscape A4.
COMMON_PAGES = ((595.0, 842.0), (612.0, 792.0), (842.0, 595.0))


@dataclass(frozen=True)
class Family(ABC):
    """A family of late-interaction checkpoints sharing classes, prompt and page geometry.

    Subclasses say at what pixel size a page is rendered (``size_for``), what token grid the
    model makes of an image of a given size (``grid_of``, the processor's own arithmetic), and
    how the model's visual tokens, found by the image token id, are laid out on that grid
    (``arrange``). ``bind`` adapts the geometry to a loaded processor's own configuration;
    ``bound`` names the fields it sets, which a collection records (``geometry``) so that its
    pages can be drawn again and explained without loading the model.

    Grids are (rows, cols) everywhere, and written "rows x cols" (``describe_grid``)."""

    bound: ClassVar[tuple[str, ...]] = ()

    name: str
    model_cls: str  # colpali-engine class names
    processor_cls: str
    trained_budget: int  # visual tokens a page gets by default
    prompt_tokens: int  # text tokens around a page's image in its prompt (batch sizing only)
    dim: int = 128  # token vector size of its checkpoints (a checkpoint may differ)
    model_types: tuple[str, ...] = ()  # config.json model_type values of its checkpoints
    examples: tuple[str, ...] = ()  # public checkpoints known to work
    unavailable: str | None = None  # why the installed libraries cannot run it, if they cannot
    # colpali-engine's model reads ``outputs.hidden_states[-1]``, which transformers collects
    # through hooks; the others read ``last_hidden_state`` and run without the hooks.
    reads_hidden_states: bool = False

    # --- geometry ------------------------------------------------------------------------------

    @abstractmethod
    def size_for(self, width: float, height: float, budget: int) -> tuple[int, int]:
        """(width_px, height_px) to render a page of ``width`` x ``height`` (any unit) at: a
        size the processor's resize leaves as it is (``processed_size``), where its
        configuration allows one."""

    @abstractmethod
    def processed_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width_px, height_px) the processor resizes an image of ``size`` to before cutting
        it into patches: its own arithmetic, mirrored (the tests check it against it)."""

    @abstractmethod
    def grid_of(self, size: tuple[int, int], budget: int) -> tuple[int, int]:
        """(rows, cols) of visual tokens the model makes of an image of ``size`` px."""

    def grid_for(self, width: float, height: float, budget: int) -> tuple[int, int]:
        """(rows, cols) of the token grid of a page of ``width`` x ``height``, as rendered."""
        return self.grid_of(self.size_for(width, height, budget), budget)

    def params(self) -> dict[str, int]:
        """The geometry ``bind`` took from the processor, e.g. ``{"tile_px": 512, ...}``."""
        return {name: getattr(self, name) for name in self.bound}

    def with_params(self, params: dict[str, Any] | None) -> Family:
        """This family with a recorded geometry (``params``); as it is for ``None``."""
        known = {k: int(v) for k, v in (params or {}).items() if k in self.bound}
        return replace(self, **known) if known else self

    @property
    @abstractmethod
    def geometry(self) -> str:
        """How this family sees a page, in a few words."""

    def tokens_per_page(self, width: float, height: float, budget: int) -> tuple[int, int]:
        """(visual tokens, all tokens) of a page of this size."""
        grid = self.grid_for(width, height, budget)
        return grid[0] * grid[1], self.sequence_tokens(grid)

    def sequence_tokens(self, grid: tuple[int, int]) -> int:
        """Tokens of a page of ``grid`` in the model's input: what a batch's budget counts."""
        return grid[0] * grid[1] + self.prompt_tokens

    def warm_up_sizes(self, budget: int) -> list[tuple[int, int]]:
        """The distinct image sizes of the common pages: a compiled model is traced for these."""
        return list(dict.fromkeys(self.size_for(w, h, budget) for w, h in COMMON_PAGES))

    # --- the model's side ----------------------------------------------------------------------

    def bind(self, processor: Any) -> Family:
        """This family with the geometry a loaded processor is configured for."""
        return self

    def prepare(self, model: Any) -> None:
        """Adjust a loaded model for serving (same outputs); nothing by default."""
        return None

    def processor_kwargs(self, budget: int) -> dict[str, Any]:
        """Extra arguments to the processor's ``from_pretrained`` for a visual-token budget."""
        return {}

    def image_token_id(self, model: Any) -> int:
        """The token id the model replaces with image features (its config's, not the
        processor's: Gemma3's processor names the begin-of-image token instead)."""
        config = getattr(model, "config", None)
        for key in ("image_token_id", "image_token_index"):
            value = getattr(config, key, None)
            if isinstance(value, int):
                return value
        raise ValueError(f"{type(model).__name__}'s config names no image token id")

    def preprocess(self, processor: Any, images: Sequence[Any], device: str) -> Any:
        """Model inputs for page images: colpali-engine's own ``process_images``."""
        return processor.process_images(list(images))

    def to_device(self, processor: Any, inputs: Any, device: str) -> dict[str, Any]:
        """The model's inputs on ``device``, copied without waiting for it (``non_blocking``:
        a blocking copy would stall until the device finished all its queued work), except
        those the model reads on the host (``host_inputs``); values that are not tensors as
        they are."""
        host = self.host_inputs()
        return {
            k: v.to(device, non_blocking=True) if hasattr(v, "to") and k not in host else v
            for k, v in inputs.items()
        }

    def pin(self, inputs: Any) -> Any:
        """The host tensors of ``inputs`` that go to the GPU, in page-locked memory: a copy
        from pageable memory first waits for the stream's queued work (the driver stages it),
        so the launching thread would stall on the batch before; from pinned memory the copy
        is queued and returns. Called in the preprocessing threads, for CUDA devices."""
        host = self.host_inputs()
        for key, value in list(inputs.items()):
            if key not in host and hasattr(value, "pin_memory") and not value.is_pinned():
                inputs[key] = value.pin_memory()
        return inputs

    def host_inputs(self) -> frozenset[str]:
        """Names of the inputs the model reads on the host: they stay there. None by default."""
        return frozenset()

    def complete(self, model: Any, inputs: Any) -> Any:
        """Inputs the model would otherwise derive itself inside its forward pass, computed
        beforehand (in the preprocessing threads); the inputs as they are by default."""
        return inputs

    def grid_tokens(
        self, visual: np.ndarray, grid: tuple[int, int], image_size: tuple[int, int]
    ) -> np.ndarray:
        """A stored page's visual tokens (model order) laid out on its ``grid``: (rows, cols,
        dim). The default: raster order, and whatever follows the grid (none) dropped."""
        rows, cols = grid
        if len(visual) < rows * cols:
            raise grid_error(self.name, len(visual), f"{rows}x{cols}")
        return visual[: rows * cols].reshape(rows, cols, -1)

    @abstractmethod
    def arrange(
        self, visual: np.ndarray, image_size: tuple[int, int], inputs: dict[str, Any], index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lay out one page's visual tokens (``visual``: (n, dim), in the model's order).

        Returns the page grid, (rows, cols, dim) in raster order, and the visual tokens that
        have no place on it, (k, dim) (a global thumbnail view; k = 0 for most families).
        ``image_size`` is the (width, height) of the image given to the processor; ``inputs``
        the batch's model inputs and ``index`` the page's row in it."""


def describe_grid(grid: tuple[int, int]) -> str:
    """A grid as every command, message and document writes it: "32 x 23 (rows x cols)"."""
    return f"{grid[0]} x {grid[1]} (rows x cols)"


def grid_error(family: str, found: int, expected: str) -> RuntimeError:
    return RuntimeError(f"{family}: found {found} image tokens, expected {expected}")
