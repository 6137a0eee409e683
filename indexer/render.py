"""PDF pages and images to model-ready RGB images, rendered straight at the model's pixel size.

``open_document`` reads a PDF (PDFium, through pypdfium2) or an image (PNG, JPEG, TIFF, WebP;
each frame a page) from a path or bytes, and ``Document.render(i)`` returns page ``i`` at the size
the model family picks (``Family.size_for``, with the geometry of the checkpoint's own processor:
``RenderOptions.family`` is a bound family), with the grid the model makes of it and its
provenance. Bad input raises one of our
exceptions naming the file and the reason. PDFium is not thread-safe: use one ``Document`` per
process (``indexer.render_pool`` runs them in a process pool).
"""

from __future__ import annotations

import functools
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from indexer.ocr import OcrMode, Word, recognize, wants_ocr
from retrieval.errors import (
    InvalidDocument,
    InvalidInput,
    PageTooLarge,
    PasswordRequired,
    UnsupportedFormat,
)
from retrieval.models import COLQWEN2, Family
from retrieval.text import clean
from retrieval.words import count

if TYPE_CHECKING:
    from PIL import Image

    from retrieval.config import Settings
    from retrieval.shared_image import SharedImage

log = logging.getLogger(__name__)

Source = Path | bytes
Kind = Literal["pdf", "image", "office"]

IMAGE_FORMATS = {"PNG", "JPEG", "MPO", "TIFF", "WEBP"}
DEFAULT_MAX_IMAGE_PIXELS = 200_000_000  # decoded pixels of one input image
MAX_PAGE_POINTS = 14400 * 100  # 100x the PDF spec's largest page (200 in): beyond is corrupt
_SNIFF_BYTES = 1024


@dataclass(frozen=True)
class RenderOptions:
    """How pages are rendered. ``supersample`` > 1 renders at k x the target then box-averages."""

    max_visual_tokens: int = 768
    supersample: int = 1
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    family: Family = COLQWEN2  # whose geometry: the image and token grid for a page
    # Which pages are read by OCR (``indexer.ocr``): auto = those without a text layer.
    ocr: OcrMode = "off"
    ocr_languages: str = "eng"  # Tesseract's: "eng", "eng+deu", ...
    ocr_dpi: int = 200

    @classmethod
    def from_settings(cls, settings: Settings, family: Family | None = None) -> RenderOptions:
        """The settings' options, with ``family``'s geometry: the loaded model's
        (``Encoder.family``), else that of the configured checkpoint's own processor
        (``retrieval.checkpoint.geometry``, which loads the processor, not the model)."""
        if family is None:
            from retrieval.checkpoint import geometry

            family = geometry(settings.model, settings.model_family, settings.max_visual_tokens)
        return cls(
            max_visual_tokens=settings.max_visual_tokens,
            supersample=settings.render_supersample,
            family=family,
            ocr=_ocr_mode(settings),
            ocr_languages=settings.ocr_languages,
        )

    def layout(self, width: float, height: float) -> tuple[tuple[int, int], tuple[int, int]]:
        """((width_px, height_px), (rows, cols)): a page's rendered size and its token grid."""
        size = self.family.size_for(width, height, self.max_visual_tokens)
        return size, self.family.grid_of(size, self.max_visual_tokens)


def _ocr_mode(settings: Settings) -> OcrMode:
    """The settings' OCR mode, checked: ``on`` (and ``auto`` where Tesseract is installed)
    needs Tesseract and the languages' data; ``auto`` without Tesseract is ``off``, said once."""
    from indexer import ocr

    if settings.ocr == "off":
        return "off"
    if settings.ocr == "auto" and not ocr.installed():
        _warn_once("OCR is off: Tesseract is not installed (apt-get install tesseract-ocr)")
        return "off"
    ocr.check(settings.ocr_languages)
    return settings.ocr


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


@dataclass(frozen=True)
class DocumentInfo:
    kind: Kind
    page_count: int


@dataclass(eq=False)
class RenderedPage:
    """One rendered page and where it came from."""

    # RGB, exactly pixel_size; from the render pool, a handle on its pixels in shared memory
    # (``retrieval.shared_image.load`` reads either kind)
    image: Image.Image | SharedImage
    page_number: int  # 1-based
    page_count: int
    size_pt: tuple[float, float]  # (width, height) in points as displayed (after /Rotate)
    rotation: int  # the page's /Rotate in degrees (0 for images)
    grid: tuple[int, int]  # (rows, cols) of visual tokens the model will see
    text: str = ""  # the page's text layer, or what OCR read on it; cleaned, capped
    words: tuple[Word, ...] = ()  # the words OCR read, with their boxes (none from a layer)
    ocr_error: str | None = None  # why OCR failed on this page (it is still embedded)

    @property
    def pixel_size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.size


def page_texts(source: Path, password: str | None = None) -> list[str]:
    """Every page's text layer (cleaned, capped), without rendering: for collections made
    before pages kept their text. An image has one page with no text."""
    import pypdfium2 as pdfium

    if sniff(source.read_bytes()[:_SNIFF_BYTES]) != "pdf":
        return [""]
    pdf = pdfium.PdfDocument(str(source), password=password)
    try:
        texts = []
        for i in range(len(pdf)):
            page = pdf[i]
            try:
                texts.append(PdfDocument._text(page))
            finally:
                page.close()
        return texts
    finally:
        pdf.close()


def sniff(head: bytes) -> Kind | None:
    """What a file is, from its first bytes: a PDF, an image PIL can open, an office or
    OpenDocument file LibreOffice converts (``indexer.convert``), or none of them."""
    if b"%PDF-" in head[:_SNIFF_BYTES]:
        return "pdf"
    from indexer.convert import is_office

    if is_office(head):
        return "office"
    from PIL import Image

    try:
        with Image.open(io.BytesIO(head)) as probe:
            return "image" if probe.format in IMAGE_FORMATS else None
    except Exception:
        # A truncated header can still identify most formats; fall back to magic numbers.
        magic = (b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"RIFF")
        return "image" if head.startswith(magic) else None


def open_document(
    source: Source,
    *,
    name: str | None = None,
    password: str | None = None,
    options: RenderOptions | None = None,
) -> Document:
    """Open a PDF, an image, or an office file (converted to PDF by LibreOffice). Raises
    ``InvalidDocument`` (or a subclass) naming the file."""
    options = options or RenderOptions()
    name = name or (str(source) if isinstance(source, Path) else "<bytes>")
    head = _head(source, name)
    if not head:
        raise InvalidDocument(f"{name}: the file is empty")  # as an upload of it is told
    kind = sniff(head)
    if kind == "pdf":
        return PdfDocument(source, name, password, options)
    if kind == "image":
        return ImageDocument(source, name, options)
    if kind == "office":
        document = PdfDocument(_converted(source, name), name, None, options)
        document.info = DocumentInfo("office", document.info.page_count)
        return document
    raise UnsupportedFormat(f"{name}: {UNSUPPORTED}")


UNSUPPORTED = (
    "not a valid PDF, nor an image (PNG, JPEG, TIFF, WebP) nor an office file (Word, "
    "PowerPoint, Excel, OpenDocument, RTF, HTML)"
)


def _converted(source: Source, name: str) -> bytes:
    """An office file as PDF; a file converted lately is not converted again (a page image
    drawn after its ingestion)."""
    from indexer.convert import to_pdf

    if isinstance(source, bytes):
        return to_pdf(source, name)
    stat = source.stat()
    return _converted_file(str(source), stat.st_size, stat.st_mtime_ns, name)


@functools.lru_cache(maxsize=4)
def _converted_file(path: str, size: int, mtime_ns: int, name: str) -> bytes:
    from indexer.convert import to_pdf

    return to_pdf(Path(path), name)


def _head(source: Source, name: str) -> bytes:
    if isinstance(source, bytes):
        return source[:_SNIFF_BYTES]
    try:
        with open(source, "rb") as f:
            return f.read(_SNIFF_BYTES)
    except FileNotFoundError:
        raise InvalidDocument(f"{name}: file not found") from None
    except IsADirectoryError:
        raise InvalidDocument(f"{name}: is a directory, not a file") from None
    except OSError as exc:
        raise InvalidDocument(f"{name}: cannot be read ({exc.strerror})") from None


class Document:
    """An open PDF or image. ``render(i)`` renders page i (0-based)."""

    name: str
    info: DocumentInfo

    def render(self, index: int) -> RenderedPage:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> Document:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.info.page_count:
            raise InvalidDocument(
                f"{self.name}: page {index + 1} does not exist "
                f"({count(self.info.page_count, 'page')})"
            )


class PdfDocument(Document):
    def __init__(self, source: Source, name: str, password: str | None, options: RenderOptions):
        import pypdfium2 as pdfium

        self.name, self.options = name, options
        try:
            self._pdf = pdfium.PdfDocument(
                source if isinstance(source, bytes) else str(source), password=password
            )
        except pdfium.PdfiumError as exc:
            raise _pdf_error(name, source, password, exc) from None
        count = len(self._pdf)
        if count == 0:
            self._pdf.close()
            raise InvalidDocument(f"{name}: the PDF has no pages")
        self._pdf.init_forms()  # so filled-in form fields are drawn
        self.info = DocumentInfo("pdf", count)

    def render(self, index: int) -> RenderedPage:
        import pypdfium2 as pdfium
        import pypdfium2.raw as pdfium_c

        self._check_index(index)
        number = index + 1
        try:
            page = self._pdf[index]
        except pdfium.PdfiumError as exc:
            raise InvalidDocument(f"{self.name}: page {number} cannot be parsed ({exc})") from None
        try:
            width_pt, height_pt = page.get_size()  # as displayed: /Rotate already applied
            if max(width_pt, height_pt) > MAX_PAGE_POINTS:
                raise PageTooLarge(
                    f"{self.name}: page {number} declares an absurd size "
                    f"({width_pt:g} x {height_pt:g} pt); the file is likely corrupt"
                )
            size, grid = self._layout(width_pt, height_pt, number)
            k = self.options.supersample
            width_px, height_px = (k * px for px in size)
            bitmap = pdfium.PdfBitmap.new_native(
                width_px, height_px, pdfium_c.FPDFBitmap_BGR, rev_byteorder=True
            )
            bitmap.fill_rect((255, 255, 255, 255), 0, 0, width_px, height_px)
            # The page is stretched onto the exact target size (aspect kept up to rounding).
            args = (bitmap, page, 0, 0, width_px, height_px, 0)
            flags = (
                pdfium_c.FPDF_ANNOT
                | pdfium_c.FPDF_RENDER_LIMITEDIMAGECACHE
                | pdfium_c.FPDF_REVERSE_BYTE_ORDER  # RGB, as the bitmap was declared
            )
            pdfium_c.FPDF_RenderPageBitmap(*args, flags)
            if page.formenv:
                pdfium_c.FPDF_FFLDraw(page.formenv, *args, flags)
            image = bitmap.to_pil()  # RGB, a copy of the buffer
            if k > 1:
                image = image.reduce(k)
            text, words, error = self._text(page), (), None
            if wants_ocr(self.options.ocr, text):
                scale = self.options.ocr_dpi / 72
                scale = min(scale, MAX_OCR_SIDE / max(width_pt, height_pt))
                text, words, error = _ocr(
                    lambda: page.render(scale=scale, grayscale=True).to_pil(),
                    text,
                    self.options,
                    f"{self.name}: page {number}",
                )
            return RenderedPage(
                image=image,
                page_number=number,
                page_count=self.info.page_count,
                size_pt=(round(width_pt, 2), round(height_pt, 2)),
                rotation=page.get_rotation(),
                grid=grid,
                text=text,
                words=words,
                ocr_error=error,
            )
        finally:
            page.close()

    @staticmethod
    def _text(page) -> str:
        """The page's text layer in reading order as PDFium extracts it, cleaned and capped."""
        import pypdfium2 as pdfium

        textpage = page.get_textpage()
        try:
            return clean(textpage.get_text_bounded())
        except pdfium.PdfiumError:
            return ""  # an unreadable text layer: the page still has its pixels
        finally:
            textpage.close()

    def _layout(self, width: float, height: float, number: int):
        try:
            return self.options.layout(width, height)
        except PageTooLarge as exc:
            raise PageTooLarge(f"{self.name}: page {number}: {exc}") from None

    def close(self) -> None:
        self._pdf.close()


def _pdf_error(name: str, source: Source, password: str | None, exc: Exception) -> InvalidDocument:
    message = str(exc)
    if "password" in message.lower():
        if password:
            return PasswordRequired(f"{name}: wrong password for this encrypted PDF")
        return PasswordRequired(f"{name}: password required (the PDF is encrypted)")
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if b" obj" not in data and b"\nobj" not in data:
        return InvalidDocument(f"{name}: not a valid PDF (it has a PDF header but no objects)")
    reason = re.search(r"PDFium: ([^)]*)", message)
    cause = _PDFIUM_CAUSES.get(reason.group(1) if reason else "", "its structure is not valid PDF")
    return InvalidDocument(
        f"{name}: the PDF is damaged and cannot be parsed ({cause}); repair or re-export it "
        "(e.g. `qpdf damaged.pdf repaired.pdf`) and ingest it again"
    )


# What PDFium's load errors mean to a user. "Success" is what it reports for a file whose
# cross-reference table is broken beyond its repair.
_PDFIUM_CAUSES = {
    "Success": "its cross-reference table is broken",
    "Unknown error": "its cross-reference table is broken",
    "Data format error": "its structure is not valid PDF",
    "File access error": "the file cannot be read to its end",
    "Unsupported security scheme": "it is encrypted with a scheme PDFium does not support",
}


class ImageDocument(Document):
    """An image file; each frame (multi-page TIFF) is a page."""

    def __init__(self, source: Source, name: str, options: RenderOptions):
        from PIL import Image

        self.name, self.options = name, options
        try:
            self._image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except Image.DecompressionBombError:
            raise PageTooLarge(f"{name}: the image is too large to decode") from None
        except Exception as exc:
            raise InvalidDocument(f"{name}: the image cannot be read ({exc})") from None
        if self._image.format not in IMAGE_FORMATS:
            fmt = self._image.format
            self._image.close()
            raise UnsupportedFormat(f"{name}: {fmt} images are not supported")
        self.info = DocumentInfo("image", getattr(self._image, "n_frames", 1))

    def render(self, index: int) -> RenderedPage:
        from PIL import Image

        self._check_index(index)
        number = index + 1
        try:
            self._image.seek(index)
            width, height = self._image.size
            if width * height > self.options.max_image_pixels:
                raise PageTooLarge(
                    f"{self.name}: image {number} is {width} x {height} pixels; the limit is "
                    f"{self.options.max_image_pixels:,} pixels"
                )
            dpi = self._image.info.get("dpi", (72, 72))
            size_pt = (
                round(width * 72 / (dpi[0] or 72), 2),
                round(height * 72 / (dpi[1] or 72), 2),
            )
            target, grid = self.options.layout(width, height)
            k = self.options.supersample
            read = wants_ocr(self.options.ocr, "")  # an image has no text layer
            if self._image.format == "JPEG" and not read:
                self._image.draft("RGB", (target[0] * k, target[1] * k))  # decode at reduced scale
            full = _to_rgb(_upright(self._image, index))
            image = full.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        except PageTooLarge as exc:
            if exc.args[0].startswith(self.name):
                raise
            raise PageTooLarge(f"{self.name}: {exc}") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidDocument(
                f"{self.name}: image {number} cannot be decoded ({exc})"
            ) from None
        text, words, error = "", (), None
        if read:
            text, words, error = _ocr(
                lambda: _fit(full, MAX_OCR_SIDE), "", self.options, f"{self.name}: image {number}"
            )
        return RenderedPage(
            image=image,
            page_number=number,
            page_count=self.info.page_count,
            size_pt=size_pt,
            rotation=0,
            grid=grid,
            text=text,
            words=words,
            ocr_error=error,
        )

    def close(self) -> None:
        self._image.close()


MAX_OCR_SIDE = 5000  # pixels: a page's longest side as OCR reads it (200 dpi A4: 2339)


def _fit(image: Image.Image, side: int) -> Image.Image:
    if max(image.size) <= side:
        return image
    image = image.copy()
    image.thumbnail((side, side))
    return image


def _ocr(
    draw, layer: str, options: RenderOptions, where: str
) -> tuple[str, tuple[Word, ...], str | None]:
    """(text, words, error) of a page OCR reads: ``draw()`` gives its image at OCR
    resolution. A failure keeps the page's own text layer and says why: the page is still
    embedded and searchable visually."""
    try:
        found = recognize(draw(), options.ocr_languages)
    except Exception as exc:
        log.warning("%s: OCR failed: %s", where, exc)
        return layer, (), f"OCR failed: {type(exc).__name__}: {exc}"
    return (found.text or layer), found.words, None


def _upright(image: Image.Image, index: int) -> Image.Image:
    """Apply the EXIF orientation of a photo (first frame only)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(image) if index == 0 else image


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB on a white background: transparency, palettes, CMYK, grayscale, 16-bit."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def parse_page_range(spec: str) -> list[int]:
    """'1-3,7' -> [1, 2, 3, 7] (1-based, in the order given, no duplicates)."""
    pages: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, _, last = part.partition("-")
        try:
            lo, hi = int(first), int(last or first)
        except ValueError:
            raise InvalidInput(f"bad page range '{spec}': use e.g. 1-3,7") from None
        if lo < 1 or hi < lo:
            raise InvalidInput(f"bad page range '{part}': pages start at 1 and ranges go up")
        pages.extend(n for n in range(lo, hi + 1) if n not in pages)
    if not pages:
        raise InvalidInput(f"bad page range '{spec}': no pages")
    return pages
