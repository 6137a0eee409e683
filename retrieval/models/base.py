"""What a model family tells the rest of the code base."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class Family(ABC):
    """A family of late-interaction checkpoints sharing classes and page geometry."""

    name: str
    model_cls: str  # colpali-engine class names
    processor_cls: str
    trained_budget: int  # visual tokens a page had in training
    prompt_tokens: int  # tokens around a page's image in its prompt

    @abstractmethod
    def grid_for(self, width: float, height: float, budget: int) -> tuple[int, int]:
        """(rows, cols) of visual tokens for a page of ``width`` x ``height`` (any unit)."""

    @abstractmethod
    def pixels_for(self, grid: tuple[int, int]) -> tuple[int, int]:
        """(width_px, height_px) of the image the model turns into exactly ``grid``."""

    def size_for(self, width: float, height: float, budget: int) -> tuple[int, int]:
        """(width_px, height_px) to render a page of ``width`` x ``height`` at."""
        return self.pixels_for(self.grid_for(width, height, budget))
