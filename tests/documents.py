"""Documents made in the test: PDFs written with PDFium itself, and images, so the core suite
needs no third-party files."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw


def marked_image(width: int, height: int, color=(200, 30, 30)) -> Image.Image:
    """White with a colored block in the top-left quarter: shows orientation after rendering."""
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).rectangle([0, 0, width // 2, height // 2], fill=color)
    return image


def make_pdf(
    pages: Sequence[tuple[float, float]],
    *,
    rotations: Sequence[int] | None = None,
    cropboxes: Sequence[tuple[float, float, float, float] | None] | None = None,
    texts: Sequence[str] | None = None,
) -> bytes:
    """A PDF with one page per (width, height) in points, each showing ``marked_image`` over the
    whole page, and with ``texts``, a line of real (extractable) text on each page."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument.new()
    for i, (width, height) in enumerate(pages):
        page = pdf.new_page(width, height)
        image = pdfium.PdfImage.new(pdf)
        bitmap = pdfium.PdfBitmap.from_pil(marked_image(200, max(1, int(200 * height / width))))
        image.set_bitmap(bitmap)
        image.set_matrix(pdfium.PdfMatrix().scale(width, height))
        page.insert_obj(image)
        if texts and texts[i]:
            _add_text(pdf, page, texts[i])
        page.gen_content()
        if rotations:
            page.set_rotation(rotations[i])
        if cropboxes and cropboxes[i]:
            page.set_cropbox(*cropboxes[i])
    buffer = io.BytesIO()
    pdf.save(buffer)
    return buffer.getvalue()


def image_bytes(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def _add_text(pdf, page, text: str) -> None:
    """A line of Helvetica text near the top of ``page``, through PDFium's own API."""
    import ctypes

    import pypdfium2.raw as pdfium_c

    obj = pdfium_c.FPDFPageObj_NewTextObj(pdf.raw, b"Helvetica", 12.0)
    encoded = (text + "\x00").encode("utf-16-le")
    buffer = ctypes.create_string_buffer(encoded, len(encoded))
    pdfium_c.FPDFText_SetText(obj, ctypes.cast(buffer, ctypes.POINTER(pdfium_c.FPDF_WCHAR)))
    pdfium_c.FPDFPageObj_Transform(obj, 1, 0, 0, 1, 20, page.get_height() - 40)
    pdfium_c.FPDFPage_InsertObject(page.raw, obj)


LINE_TOP, LINE_STEP, FONT_SIZE = 60.0, 28.0, 14.0  # points from the top; make_text_pdf's lines


def make_text_pdf(pages: Sequence[Sequence[str]], size: tuple[float, float] = (595, 842)) -> bytes:
    """A PDF of real text: on each page its lines, in Helvetica, ``LINE_STEP`` points apart
    from ``LINE_TOP`` points below the top edge."""
    import ctypes

    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    pdf = pdfium.PdfDocument.new()
    for lines in pages:
        page = pdf.new_page(*size)
        for n, line in enumerate(lines):
            obj = pdfium_c.FPDFPageObj_NewTextObj(pdf.raw, b"Helvetica", FONT_SIZE)
            encoded = (line + "\x00").encode("utf-16-le")
            buffer = ctypes.create_string_buffer(encoded, len(encoded))
            pointer = ctypes.cast(buffer, ctypes.POINTER(pdfium_c.FPDF_WCHAR))
            pdfium_c.FPDFText_SetText(obj, pointer)
            baseline = size[1] - LINE_TOP - n * LINE_STEP
            pdfium_c.FPDFPageObj_Transform(obj, 1, 0, 0, 1, 40, baseline)
            pdfium_c.FPDFPage_InsertObject(page.raw, obj)
        page.gen_content()
    buffer = io.BytesIO()
    pdf.save(buffer)
    return buffer.getvalue()


def scanned(pdf_bytes: bytes, dpi: int = 150) -> bytes:
    """``pdf_bytes`` as a scanner gives it back: each page an image of the rendered page, and
    no text layer at all."""
    import pypdfium2 as pdfium

    source = pdfium.PdfDocument(pdf_bytes)
    out = pdfium.PdfDocument.new()
    for i in range(len(source)):
        width, height = source[i].get_size()
        picture = source[i].render(scale=dpi / 72, grayscale=True).to_pil().convert("RGB")
        page = out.new_page(width, height)
        image = pdfium.PdfImage.new(out)
        image.set_bitmap(pdfium.PdfBitmap.from_pil(picture))
        image.set_matrix(pdfium.PdfMatrix().scale(width, height))
        page.insert_obj(image)
        page.gen_content()
    buffer = io.BytesIO()
    out.save(buffer)
    return buffer.getvalue()
