"""Text for pages that have none: Tesseract OCR (Debian's ``tesseract-ocr`` and its language
data, through ``pytesseract``), run in the render processes beside the page's rendering.

A scanned page, a photo or an image has no text layer, so BM25 (the ``text`` and ``hybrid``
modes) and snippets are blind to it. ``recognize`` reads a page image at OCR resolution
(``RenderOptions.ocr_dpi``, 200 by default: the model's own ~75 dpi is too coarse to read) and
returns its words with their boxes, in reading order, as fractions of the page's width and
height: the BM25 vector is built from them, and snippets and the similarity map can point at
them. A page whose OCR fails is still embedded and searched visually; its error is kept.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from retrieval.errors import ConfigurationError
from retrieval.text import clean

if TYPE_CHECKING:
    from PIL import Image

OcrMode = Literal["auto", "on", "off"]
# A text layer with fewer letters or digits than this is taken to be none (a scan carries
# at most a page number or a stray mark in its own layer).
MIN_TEXT_CHARS = 16
MIN_CONFIDENCE = 30  # Tesseract's word confidence (0-100) below which a "word" is noise
OCR_TIMEOUT_S = 120  # one page


@dataclass(frozen=True)
class Word:
    """A word read on a page, its box as fractions of the page: (x0, y0) top left."""

    text: str
    x0: float
    y0: float
    x1: float
    y1: float

    def as_list(self) -> list:
        return [self.text, self.x0, self.y0, self.x1, self.y1]


@dataclass(frozen=True)
class Recognized:
    text: str  # the words in reading order, a line a line, cleaned
    words: tuple[Word, ...]


def wants_ocr(mode: OcrMode, text: str) -> bool:
    """Whether a page with text layer ``text`` is read by OCR: ``on`` always, ``auto`` only
    when its layer is empty or next to empty (``MIN_TEXT_CHARS``)."""
    if mode == "off":
        return False
    return mode == "on" or sum(c.isalnum() for c in text) < MIN_TEXT_CHARS


@functools.cache
def installed() -> bool:
    return shutil.which("tesseract") is not None


@functools.cache
def check(languages: str) -> None:
    """``ConfigurationError`` unless Tesseract and the language data of ``languages``
    ('eng', 'eng+deu') are installed."""
    if not installed():
        raise ConfigurationError(
            "OCR needs Tesseract: install it (Debian: apt-get install tesseract-ocr "
            "tesseract-ocr-eng), or set COLQWEN_OCR=off"
        )
    import pytesseract

    have = set(pytesseract.get_languages(config=""))
    if missing := [lang for lang in languages.split("+") if lang not in have]:
        raise ConfigurationError(
            f"OCR languages {missing} are not installed (Debian: apt-get install "
            f"{' '.join('tesseract-ocr-' + m for m in missing)}); installed: "
            f"{', '.join(sorted(have))}"
        )


def recognize(image: Image.Image, languages: str = "eng") -> Recognized:
    """The words on ``image`` (a page at OCR resolution). Raises what Tesseract raises."""
    import pytesseract

    data = pytesseract.image_to_data(
        image.convert("L"),
        lang=languages,
        output_type=pytesseract.Output.DICT,
        timeout=OCR_TIMEOUT_S,
    )
    width, height = image.size
    words: list[Word] = []
    lines: dict[tuple[int, int, int], list[str]] = {}
    for i, raw in enumerate(data["text"]):
        text = raw.strip()
        if not text or float(data["conf"][i]) < MIN_CONFIDENCE:
            continue
        left, top = data["left"][i], data["top"][i]
        words.append(
            Word(
                text,
                round(left / width, 4),
                round(top / height, 4),
                round((left + data["width"][i]) / width, 4),
                round((top + data["height"][i]) / height, 4),
            )
        )
        line = (data["block_num"][i], data["par_num"][i], data["line_num"][i])
        lines.setdefault(line, []).append(text)
    return Recognized(clean("\n".join(" ".join(w) for w in lines.values())), tuple(words))
