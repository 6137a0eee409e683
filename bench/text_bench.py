"""What text from scans and office files costs: OCR pages a second on one core (against
rendering the same pages without it), and seconds to convert an office document to PDF.

    uv run python -m bench.text_bench [--pages 24] [--documents 3]

OCR reads scans of real, content-dense manual pages (``../shared/pdfs/good``: R-intro.pdf,
reportlab-userguide.pdf, auto-multiple-choice.en.pdf, rendered at 150 dpi into image-only
PDFs, as a scanner returns them), falling back to synthetic pages of text without ../shared.
One process, one core (``OMP_THREAD_LIMIT=1``, as each render process runs it). Conversion
converts files written by LibreOffice itself (tests/office.py), each in a fresh ``soffice``
as ingestion runs it, plus a 40-page text document.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # Tesseract's own threads: one core

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "pdfs" / "good"
MANUALS = ("R-intro.pdf", "reportlab-userguide.pdf", "auto-multiple-choice.en.pdf")


def _scans(pages: int) -> tuple[bytes, str]:
    """An image-only PDF of ``pages`` pages, and where they came from."""
    import pypdfium2 as pdfium

    from tests.documents import make_text_pdf, scanned

    if all((SHARED / m).is_file() for m in MANUALS):
        out = pdfium.PdfDocument.new()
        per = -(-pages // len(MANUALS))
        for name in MANUALS:
            source = pdfium.PdfDocument(str(SHARED / name))
            # Pages from the body of each manual (past the title and contents).
            out.import_pages(source, list(range(10, 10 + per)))
        while len(out) > pages:
            out.del_page(len(out) - 1)
        buffer = __import__("io").BytesIO()
        out.save(buffer)
        return scanned(buffer.getvalue()), "pages of three manuals in ../shared/pdfs/good"
    lines = [" ".join(f"word{(i * 7 + j) % 97}" for j in range(10)) for i in range(40)]
    return scanned(make_text_pdf([lines] * pages)), "synthetic pages of 40 lines"


def ocr_rate(pages: int) -> None:
    from indexer.render import RenderOptions, open_document

    pdf, what = _scans(pages)
    rates = {}
    for mode in ("off", "on"):
        options = RenderOptions(max_visual_tokens=768, ocr=mode)
        start = time.perf_counter()
        words = 0
        with open_document(pdf, name="scans.pdf", options=options) as document:
            for i in range(document.info.page_count):
                words += len(document.render(i).words)
        rates[mode] = (pages / (time.perf_counter() - start), words)
    print(f"OCR of {pages} scanned pages ({what}), one core:")
    print(f"  rendering alone:    {rates['off'][0]:6.2f} pages/s")
    print(
        f"  rendering with OCR: {rates['on'][0]:6.2f} pages/s "
        f"({rates['on'][1] / pages:.0f} words a page)"
    )


def conversion_seconds(documents: int) -> None:
    from indexer.convert import to_pdf
    from tests import office

    folder = Path(tempfile.mkdtemp(prefix="text-bench-"))
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"
    sources = {
        "odt (3 pages)": office.odt(folder / "w.odt", ["one", "two", "three"]),
        "odt (40 pages)": office.odt(folder / "long.odt", [f"{words} " * 60] * 40),
        "odp (2 slides)": office.odp(folder / "p.odp", ["one", "two"]),
        "ods (2 sheets)": office.ods(folder / "s.ods", ["one", "two"]),
    }
    sources["docx (40 pages)"] = office.convert(sources["odt (40 pages)"], "docx", folder)
    sources["pptx (2 slides)"] = office.convert(sources["odp (2 slides)"], "pptx", folder)
    sources["xlsx (2 sheets)"] = office.convert(sources["ods (2 sheets)"], "xlsx", folder)
    print(f"\nConversion to PDF, a fresh LibreOffice each (median of {documents}):")
    for label, path in sources.items():
        seconds = []
        for _ in range(documents):
            start = time.perf_counter()
            to_pdf(path, path.name)
            seconds.append(time.perf_counter() - start)
        low, high = min(seconds), max(seconds)
        print(f"  {label:16} {statistics.median(seconds):5.2f} s ({low:.2f}-{high:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=24)
    parser.add_argument("--documents", type=int, default=3)
    args = parser.parse_args()
    ocr_rate(args.pages)
    conversion_seconds(args.documents)


if __name__ == "__main__":
    main()
