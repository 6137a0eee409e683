"""Rendering PDFs and images straight at the model's pixel size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.render import RenderOptions, open_document, parse_page_range
from indexer.render_pool import (
    DocumentFailed,
    DocumentOpened,
    PageRendered,
    Renderer,
    RenderRequest,
)
from retrieval.errors import (
    InvalidDocument,
    InvalidInput,
    PageTooLarge,
    PasswordRequired,
    UnsupportedFormat,
)
from retrieval.models import family
from retrieval.shared_image import SharedImage, load
from tests.conftest import shared_pdfs
from tests.documents import image_bytes, make_pdf, marked_image
from tests.tiny_model import build_processor

A4, LETTER = (595.28, 841.89), (612, 792)


@pytest.fixture(scope="module")
def processor():
    return build_processor(max_visual_tokens=768)


def processor_grid(processor, image: Image.Image) -> tuple[int, int]:
    """(rows, cols) the model's processor makes of an image: the independent oracle."""
    grid = processor.image_processor(images=[image], return_tensors="np")["image_grid_thw"][0]
    return int(grid[1]) // 2, int(grid[2]) // 2


@pytest.mark.parametrize(
    ("size", "grid"),
    [
        (A4, (33, 23)),
        ((A4[1], A4[0]), (23, 33)),
        (LETTER, (31, 24)),
        ((4, 4), (27, 27)),  # a tiny page fills the budget
        ((1920, 1080), (20, 36)),  # a slide
        ((226, 2000), (80, 9)),  # a receipt: 9 * 2000 / 226 = 79.6
    ],
)
def test_target_grid_fills_the_budget_keeping_the_aspect(size, grid):
    assert family("colqwen2").grid_for(*size, 768) == grid
    rows, cols = grid
    assert rows * cols <= 768
    # Aspect kept up to rounding rows to a whole token.
    assert abs(rows - cols * size[1] / size[0]) <= 0.5


@pytest.mark.parametrize(
    "size", [A4, LETTER, (4, 4), (1920, 1080), (226, 2000), (3000, 20), (50, 51)]
)
@pytest.mark.parametrize("budget", [64, 256, 768, 1024])
def test_processor_resize_is_a_no_op_on_the_target_size(size, budget):
    processor = build_processor(max_visual_tokens=budget)
    width, height = family("colqwen2").size_for(*size, budget)
    image = Image.new("RGB", (width, height), "white")
    assert processor_grid(processor, image) == family("colqwen2").grid_for(*size, budget)


def test_absurd_aspect_ratio_is_refused():
    with pytest.raises(PageTooLarge, match="aspect ratio"):
        family("colqwen2").grid_for(595, 2**31, 768)


def test_pdf_pages_render_at_target_size_with_provenance(processor):
    pdf = make_pdf([A4, (A4[1], A4[0]), LETTER])
    with open_document(pdf, name="made.pdf") as document:
        assert document.info.page_count == 3
        pages = [document.render(i) for i in range(3)]
    for page, size in zip(pages, [A4, (A4[1], A4[0]), LETTER], strict=True):
        assert page.page_count == 3
        assert page.size_pt == pytest.approx(size, abs=0.01)
        assert page.pixel_size == family("colqwen2").size_for(*size, 768)
        assert page.image.mode == "RGB"
        assert processor_grid(processor, page.image) == page.grid
    assert [p.page_number for p in pages] == [1, 2, 3]
    assert pages[0].pixel_size == (644, 924)
    # Red block top-left, white bottom-right: colours and orientation as drawn.
    assert pages[0].image.getpixel((10, 10)) == (200, 30, 30)
    assert pages[0].image.getpixel((600, 900)) == (255, 255, 255)


def test_rotation_is_honoured():
    pdf = make_pdf([A4], rotations=[90])
    page = open_document(pdf).render(0)
    assert page.rotation == 90
    assert page.size_pt == pytest.approx((A4[1], A4[0]), abs=0.01)
    assert page.pixel_size == (924, 644)
    # Rotated 90 degrees clockwise: the top-left block is now top-right.
    assert page.image.getpixel((900, 10)) == (200, 30, 30)
    assert page.image.getpixel((10, 10)) == (255, 255, 255)


def test_crop_box_is_honoured():
    pdf = make_pdf([A4], cropboxes=[(0, A4[1] / 2, A4[0] / 2, A4[1])])  # the top-left quarter
    page = open_document(pdf).render(0)
    assert page.size_pt == pytest.approx((A4[0] / 2, A4[1] / 2), abs=0.01)
    pixels = np.asarray(page.image)
    assert (np.abs(pixels.astype(int) - (200, 30, 30)).max(axis=2) <= 2).mean() > 0.95


def test_supersampling_keeps_the_target_size():
    pdf = make_pdf([A4])
    plain = open_document(pdf).render(0)
    super_ = open_document(pdf, options=RenderOptions(supersample=2)).render(0)
    assert super_.pixel_size == plain.pixel_size and super_.grid == plain.grid


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_images_are_one_page_at_target_size(fmt, processor):
    data = image_bytes(marked_image(1240, 1754), fmt)
    with open_document(data, name=f"scan.{fmt.lower()}") as document:
        assert document.info.kind == "image" and document.info.page_count == 1
        page = document.render(0)
    assert page.pixel_size == family("colqwen2").size_for(1240, 1754, 768)
    assert processor_grid(processor, page.image) == page.grid
    r, g, b = page.image.getpixel((10, 10))
    assert r > 150 and g < 80 and b < 80


def test_image_modes_become_rgb_on_white(tmp_path):
    transparent = Image.new("RGBA", (300, 400), (0, 0, 0, 0))
    cmyk = Image.new("CMYK", (300, 400), (0, 0, 0, 0))  # no ink = white
    gray16 = Image.new("I;16", (300, 400), 65535)
    for image, fmt in [(transparent, "PNG"), (cmyk, "JPEG"), (gray16, "PNG"), (cmyk, "TIFF")]:
        path = tmp_path / f"img.{fmt.lower()}"
        image.save(path, format=fmt)
        page = open_document(path).render(0)
        assert page.image.mode == "RGB"
        assert min(page.image.getpixel((150, 200))) >= 250, (image.mode, fmt)


def test_multi_frame_tiff_is_one_page_per_frame(tmp_path):
    frames = [marked_image(600, 800, color=c) for c in [(200, 0, 0), (0, 200, 0), (0, 0, 200)]]
    path = tmp_path / "scan.tiff"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with open_document(path) as document:
        pages = [document.render(i) for i in range(document.info.page_count)]
    assert [p.page_number for p in pages] == [1, 2, 3]
    assert [max(range(3), key=lambda k: p.image.getpixel((5, 5))[k]) for p in pages] == [0, 1, 2]


def test_image_over_the_pixel_limit_is_refused(tmp_path):
    path = tmp_path / "big.png"
    Image.new("1", (12000, 12000)).save(path)
    options = RenderOptions(max_image_pixels=100_000_000)
    with pytest.raises(PageTooLarge, match=r"big\.png"):
        open_document(path, options=options).render(0)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"hello, this is text", UnsupportedFormat, "not a valid PDF"),
        (b"%PDF-1.4\n%%EOF\n", InvalidDocument, "not a valid PDF"),
        (make_pdf([A4])[:400] + b"garbage" * 50, InvalidDocument, "cannot be parsed"),
    ],
)
def test_bad_bytes_raise_our_errors_naming_the_file(data, error, message):
    with pytest.raises(error, match=f"upload.pdf: .*{message}"):
        open_document(data, name="upload.pdf")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidDocument, match="file not found"):
        open_document(tmp_path / "nope.pdf")


def test_parse_page_range():
    assert parse_page_range("1-3,7,2") == [1, 2, 3, 7]
    for bad in ["", "0", "3-1", "a"]:
        with pytest.raises(InvalidInput, match="page range"):
            parse_page_range(bad)


# --- the pool ------------------------------------------------------------------------------------


def test_pool_streams_documents_in_order_and_isolates_failures():
    good = make_pdf([A4, LETTER, A4])
    requests = [
        RenderRequest(good, "a.pdf"),
        RenderRequest(b"not a pdf", "b.pdf"),
        RenderRequest(good, "c.pdf", pages=[3, 1]),
    ]
    with Renderer(workers=2) as renderer:
        events = list(renderer.stream(requests))
    kinds = [(type(e).__name__, e.request.name) for e in events]
    assert kinds == [
        ("DocumentOpened", "a.pdf"),
        ("PageRendered", "a.pdf"),
        ("PageRendered", "a.pdf"),
        ("PageRendered", "a.pdf"),
        ("DocumentFailed", "b.pdf"),
        ("DocumentOpened", "c.pdf"),
        ("PageRendered", "c.pdf"),
        ("PageRendered", "c.pdf"),
    ]
    assert [e.page.page_number for e in events if isinstance(e, PageRendered)] == [1, 2, 3, 3, 1]
    assert isinstance(events[4].error, UnsupportedFormat)


def test_pool_and_in_process_render_identical_pixels():
    pdf = make_pdf([A4, LETTER])
    with Renderer(workers=2) as pool, Renderer(workers=0) as inline:
        a = list(pool.pages(RenderRequest(pdf, "x.pdf")))
        b = list(inline.pages(RenderRequest(pdf, "x.pdf")))
    for pa, pb in zip(a, b, strict=True):
        assert isinstance(pa.image, SharedImage) or not Path("/dev/shm").is_dir()
        assert pa.pixel_size == pb.image.size
        assert np.array_equal(np.asarray(load(pa.image)), np.asarray(pb.image))


def test_a_hung_page_fails_its_document_and_the_stream_goes_on():
    # A timeout far below any page's render time stands in for a file that hangs PDFium.
    with Renderer(workers=1, page_timeout_s=0.0) as renderer:
        events = list(renderer.stream([RenderRequest(make_pdf([A4]), "hang.pdf")]))
        assert isinstance(events[-1], DocumentFailed)
        assert "hang.pdf" in str(events[-1].error)
        renderer.page_timeout_s = 60
        pages = list(renderer.pages(RenderRequest(make_pdf([A4]), "after.pdf")))
    assert len(pages) == 1


def test_a_crashed_pool_fails_one_document_and_the_next_ones_render_whole():
    # The next documents' probes and pages are in flight when every worker dies at once (as an
    # out-of-memory kill would do): they are resubmitted to the new pool, none lost. (Python's
    # pool may miss a worker killed mid-read and hang instead, gh-94777: the timeout ends that.)
    pdf = make_pdf([A4] * 6)
    requests = [RenderRequest(pdf, f"{i}.pdf") for i in range(5)]
    events = []
    with Renderer(workers=2, page_timeout_s=10) as renderer:
        for event in renderer.stream(requests):
            events.append(event)
            if len(events) == 1:  # the first document opened; the next ones' probes in flight
                for process in list(renderer._executor._processes.values()):
                    process.kill()
    failed = [e for e in events if isinstance(e, DocumentFailed)]
    assert [e.request.name for e in failed] == ["0.pdf"]
    assert "the renderer crashed on page 1" in str(failed[0].error) or "took longer" in str(
        failed[0].error
    )
    for name in ["1.pdf", "2.pdf", "3.pdf", "4.pdf"]:
        mine = [e for e in events if e.request.name == name]
        assert isinstance(mine[0], DocumentOpened)
        assert [e.page.page_number for e in mine[1:]] == [1, 2, 3, 4, 5, 6]


# --- the shared third-party PDFs ------------------------------------------------------------


def test_every_good_pdf_renders_every_page(processor):
    folder = shared_pdfs("good")
    files = sorted(folder.glob("*.pdf"))
    assert len(files) == 17
    with Renderer(workers=2) as renderer:
        events = list(renderer.stream(RenderRequest(f, f.name) for f in files))
    failures = [str(e.error) for e in events if isinstance(e, DocumentFailed)]
    assert failures == []
    opened = {e.request.name: e.info.page_count for e in events if isinstance(e, DocumentOpened)}
    pages = [e.page for e in events if isinstance(e, PageRendered)]
    assert len(pages) == sum(opened.values()) == 371
    assert opened["R-intro.pdf"] == 113 and opened["reportlab-userguide.pdf"] == 134
    for page in pages[::7]:  # a sample: the processor is slow on 2 cores
        assert processor_grid(processor, load(page.image)) == page.grid
    for page in pages:
        rows, cols = page.grid
        assert page.pixel_size == (cols * 28, rows * 28)
        assert 700 <= rows * cols <= 768
    a4 = [p for e, p in zip(events, pages, strict=False) if p.size_pt == pytest.approx(A4, abs=1)]
    assert all(p.grid in ((32, 23), (33, 23)) for p in a4)
    habibi = [
        e.page
        for e in events
        if isinstance(e, PageRendered) and e.request.name == "habibi-rotated.pdf"
    ]
    assert habibi[0].rotation == 90 and habibi[0].pixel_size[0] > habibi[0].pixel_size[1]


BAD = {
    "invalid-44-bytes.pdf": (InvalidDocument, "not a valid PDF"),
    "bug1020226.pdf": (InvalidDocument, "cannot be parsed"),
    "REDHAT-1531897-0.pdf": (InvalidDocument, "cannot be parsed"),
    "poppler-742-0-fuzzed.pdf": (InvalidDocument, "cannot be parsed"),
    "Brotli-Prototype-FileA.pdf": (InvalidDocument, "cannot be parsed"),
    "encrypted-libreoffice.pdf": (PasswordRequired, "password required"),
    "issue6010_1.pdf": (PasswordRequired, "password required"),
    "saslprep-r6.pdf": (PasswordRequired, "password required"),
    # PDFium reports this fuzzed file as encrypted or as corrupt, depending on its prior state.
    "poppler-395-0-fuzzed.pdf": (InvalidDocument, ("password required", "cannot be parsed")),
    "poppler-85140-0.pdf": (PageTooLarge, "absurd size"),
}


def test_every_bad_pdf_gets_its_documented_error():
    folder = shared_pdfs("bad")
    files = [folder / name for name in BAD]
    with Renderer(workers=2) as renderer:
        events = list(renderer.stream(RenderRequest(f, f.name) for f in files))
    failed = {e.request.name: e.error for e in events if isinstance(e, DocumentFailed)}
    assert set(failed) == set(BAD)
    for name, (error, message) in BAD.items():
        assert isinstance(failed[name], error), (name, failed[name])
        messages = (message,) if isinstance(message, str) else message
        assert any(m in str(failed[name]) for m in messages) and name in str(failed[name])


@pytest.mark.parametrize(
    ("name", "password"),
    [("encrypted-libreoffice.pdf", "openpassword"), ("issue6010_1.pdf", "abc")],
)
def test_encrypted_pdf_opens_with_its_password(name, password):
    path = shared_pdfs("bad") / name
    with pytest.raises(PasswordRequired, match="wrong password"):
        open_document(path, password="not-it")
    with open_document(path, password=password) as document:
        assert document.render(0).grid[0] > 0


@pytest.mark.parametrize("name", ["hugemono.pdf", "enormous.pdf"])
def test_huge_images_render_within_budget_and_bounded_memory(name):
    path = shared_pdfs("bad") / name
    # Peak RSS from VmHWM: ru_maxrss survives exec on Linux and would report pytest's own peak.
    script = (
        "from pathlib import Path\n"
        "from indexer.render import open_document\n"
        f"page = open_document(Path({str(path)!r})).render(0)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(page.pixel_size[0] * page.pixel_size[1], int(hwm.split()[1]) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    pixels, peak_mb = map(int, out.stdout.split())
    assert pixels <= 768 * 28 * 28
    assert peak_mb < 200, f"{name} peaked at {peak_mb} MB"
