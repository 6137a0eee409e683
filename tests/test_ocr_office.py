"""Text where users need it: scanned pages read by Tesseract (words and their boxes kept with
the page), and Word, PowerPoint, Excel, OpenDocument and RTF files converted by LibreOffice,
all through the real CLI with the tiny model. Needs Debian's tesseract-ocr and LibreOffice
(``.ci/run`` installs them; with REQUIRE_OFFICE set, as there, these tests fail rather than
skip without them)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from indexer import convert, ocr
from retrieval.errors import InvalidDocument, UnsupportedFormat
from tests import office
from tests.documents import FONT_SIZE, LINE_STEP, LINE_TOP, make_text_pdf, scanned

BUDGET = 64


def _require(available: bool, what: str) -> None:
    if not available:
        if os.environ.get("REQUIRE_OFFICE"):
            pytest.fail(f"{what} is not installed")
        pytest.skip(f"{what} is not installed (.ci/run installs it)")


@pytest.fixture
def env(tiny_model_dir, tmp_path, monkeypatch):
    data = tmp_path / "data"
    for key, value in {
        "COLQWEN_MODEL": str(tiny_model_dir),
        "COLQWEN_MAX_VISUAL_TOKENS": str(BUDGET),
        "COLQWEN_DATA_DIR": str(data),
        "COLQWEN_DEVICE": "cpu",
        "COLQWEN_RENDER_WORKERS": "2",
        "COLQWEN_OCR": "auto",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("COLQWEN_QDRANT_URL", raising=False)
    return data


def cli_json(*args: str):
    result = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
    return json.loads(result.stdout), result.exit_code


def _stored(collection: str = "pages") -> list[dict]:
    """Every stored page's payload."""
    from retrieval.config import Settings
    from retrieval.store import PageStore

    store = PageStore.from_settings(Settings())
    try:
        return [
            store.page(collection, doc.doc_id, n)
            for doc in store.documents(collection)
            for n in sorted(store.stored_page_numbers(collection, doc.doc_id))
        ]
    finally:
        store.close()


# --- OCR -------------------------------------------------------------------------------------

_VOCABULARY = (
    "harbour lantern meadow copper violin orchard glacier tunnel falcon marble canyon "
    "pepper saddle beacon walnut ribbon thunder compass velvet island anchor basket "
    "cobalt dragon ember fossil garnet hollow ivory jasmine kettle lagoon mantle nectar "
    "oyster prairie quarry raven salmon timber umbrella vessel willow yonder zenith "
    "bramble cinder dune "
)
WORDS = _VOCABULARY.split()


def _pages(n: int, seed: int = 7) -> list[list[str]]:
    """``n`` pages of eight lines of six words, each line a different draw."""
    rng = random.Random(seed)
    return [[" ".join(rng.sample(WORDS, 6)) for _ in range(8)] for _ in range(n)]


def test_a_scanned_page_is_read_with_its_words_where_they_are(tmp_path):
    """OCR of an image-only page: the words of the text it was made from, each with a box
    where that line was drawn (the oracle: the text PDF's own layout)."""
    _require(ocr.installed(), "Tesseract")
    from indexer.render import RenderOptions, open_document

    lines = _pages(1)[0]
    pdf = scanned(make_text_pdf([lines]))
    options = RenderOptions(max_visual_tokens=BUDGET, ocr="auto")
    with open_document(pdf, name="scan.pdf", options=options) as document:
        page = document.render(0)
    assert page.ocr_error is None
    read = page.text.split()
    expected = " ".join(lines).split()
    assert sum(w in read for w in expected) >= 0.9 * len(expected)
    height = 842.0
    for n, line in enumerate(lines):
        first = line.split()[0]
        boxes = [w for w in page.words if w.text == first]
        assert boxes, first
        baseline = (LINE_TOP + n * LINE_STEP) / height  # from the top, as fractions
        box = min(boxes, key=lambda w: abs(w.y1 - baseline))
        assert abs(box.y1 - baseline) < 0.01 and box.y1 - box.y0 < 1.5 * FONT_SIZE / height
        assert 0 <= box.x0 < box.x1 <= 1
    with open_document(pdf, name="scan.pdf", options=RenderOptions(ocr="off")) as document:
        assert document.render(0).text == ""  # off: no OCR


@pytest.mark.slow  # OCR of 16 pages and a tiny model's ingestion: ~30 s on 2 cores
def test_an_image_only_pdf_is_found_by_phrases_of_its_original_text(env, tmp_path):
    """The scan of a text PDF, searched by phrases of its text (``text`` mode), finds their
    pages as well as the text PDF itself does (the oracle: the same queries on the pages'
    own text layer; a bag of 48 words makes some phrases ambiguous in both)."""
    _require(ocr.installed(), "Tesseract")
    pages = _pages(16)
    for name, pdf in (("original", make_text_pdf(pages)), ("scans", scanned(make_text_pdf(pages)))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / f"{name}.pdf").write_bytes(pdf)
        report, code = cli_json("ingest", str(folder), "--collection", name)
        assert code == 0 and report["summary"]["indexed"] == 1
    rng = random.Random(3)
    queries = []
    for number, page in enumerate(pages, 1):
        start = rng.randrange(0, 3)
        queries.append((number, " ".join(rng.choice(page).split()[start : start + 4])))
    found = {}
    for collection in ("original", "scans"):
        at_1 = at_10 = 0
        for number, phrase in queries:
            hits, _ = cli_json(
                "search", phrase, "--mode", "text", "--top-k", "10", "--collection", collection
            )
            ranked = [h["page"] for h in hits["hits"]]
            at_1 += ranked[:1] == [number]
            at_10 += number in ranked
        found[collection] = (at_1 / len(queries), at_10 / len(queries))
    assert found["scans"][1] >= 0.75, found  # recall@10: the bar
    assert found["scans"][0] >= found["original"][0] - 1 / 16, found  # as good as the text
    stored = _stored("scans")
    assert len(stored) == 16 and all(p["words"] and "ocr_error" not in p for p in stored)
    word = stored[0]["words"][0]
    assert isinstance(word[0], str) and all(0 <= v <= 1 for v in word[1:])
    assert all("words" not in p for p in _stored("original"))  # a text layer: no OCR


# --- office files ----------------------------------------------------------------------------


def _office_files(folder: Path) -> dict[str, tuple[int, list[str]]]:
    """One file of each format, written by LibreOffice (or from scratch: the OpenDocument
    ones): name -> (pages, a distinct word on each page)."""
    texts = {
        "writer": ["aluminium smelter output", "zebra migration routes", "quartz crystal growth"],
        "impress": ["kangaroo population slide", "pelican feeding slide"],
        "calc": ["turbine maintenance sheet", "glacier retreat sheet"],
    }
    made = {
        "writer": office.odt(folder / "w.odt", texts["writer"]),
        "impress": office.odp(folder / "p.odp", texts["impress"]),
        "calc": office.ods(folder / "s.ods", texts["calc"]),
    }
    suffixes = {
        "writer": ("docx", "doc", "rtf"),
        "impress": ("pptx", "ppt"),
        "calc": ("xlsx", "xls"),
    }
    out = {}
    for family, source in made.items():
        words = [t.split()[0] for t in texts[family]]
        out[source.name] = (len(words), words)
        for suffix in suffixes[family]:
            converted = office.convert(source, suffix, folder)
            renamed = converted.rename(folder / f"{family}-{suffix}.{suffix}")  # distinct names
            out[renamed.name] = (len(words), words)
    return out


@pytest.mark.slow  # ten LibreOffice conversions to write them, ten to ingest them: ~40 s
def test_office_and_opendocument_files_ingest_to_their_pages_and_are_found(env, tmp_path):
    _require(convert.installed(), "LibreOffice")
    folder = tmp_path / "in"
    folder.mkdir()
    files = _office_files(folder)
    report, code = cli_json("ingest", str(folder))
    assert code == 0, report
    documents = {d["name"]: d for d in report["documents"]}
    # Files of one family hold the same text: each is its own document all the same.
    assert set(documents) == set(files)
    for name, (pages, _) in files.items():
        assert documents[name]["status"] == "indexed" and documents[name]["pages"] == pages, name
    for name, (_, words) in files.items():
        for number, word in enumerate(words, 1):
            hits, _ = cli_json("search", word, "--mode", "text", "--top-k", "20")
            assert (name, number) in {(h["source"], h["page"]) for h in hits["hits"]}, word


def test_a_corrupt_office_file_fails_cleanly_and_leaves_nothing(tmp_path):
    _require(convert.installed(), "LibreOffice")
    from indexer.render import RenderOptions, open_document

    corrupt = b"PK\x03\x04" + b"[Content_Types].xml" + os.urandom(4000)
    before = _leftovers()
    with pytest.raises(InvalidDocument, match="LibreOffice cannot convert it"):
        open_document(corrupt, name="broken.docx", options=RenderOptions(max_visual_tokens=64))
    assert _leftovers() == before


def test_a_conversion_that_never_finishes_is_stopped_and_leaves_nothing(tmp_path):
    _require(convert.installed(), "LibreOffice")
    source = office.odt(tmp_path / "w.odt", ["a page"])
    before = _leftovers()
    start = time.monotonic()
    with pytest.raises(InvalidDocument, match="took longer than"):
        convert.to_pdf(source, "w.odt", timeout_s=0.3)  # LibreOffice needs a second to start
    assert time.monotonic() - start < 15
    assert _leftovers() == before  # no process, no folder


def test_without_libreoffice_office_files_are_refused_saying_what_to_install(tmp_path, monkeypatch):
    from indexer.uploads import UploadFolder

    monkeypatch.setattr(convert, "soffice", lambda: None)
    with pytest.raises(UnsupportedFormat, match="install LibreOffice"):
        convert.to_pdf(b"PK\x03\x04[Content_Types].xml", "a.docx")
    incoming = UploadFolder(tmp_path / "uploads").incoming("a.docx", 1 << 20)
    incoming.write(b"PK\x03\x04" + b"[Content_Types].xml" + b"\x00" * 100)
    with pytest.raises(UnsupportedFormat, match="apt-get install libreoffice"):
        incoming.commit()


def _leftovers() -> tuple[list[str], list[str]]:
    """Conversion folders in the temporary directory, and LibreOffice processes still
    running (a killed one init has not reaped yet runs no more)."""
    folders = sorted(p.name for p in Path(tempfile.gettempdir()).glob("colqwen-convert-*"))
    ps = subprocess.run(["ps", "-eo", "stat=,comm="], capture_output=True, text=True).stdout
    rows = [line.split(None, 1) for line in ps.splitlines() if line.strip()]
    return folders, [comm for stat, comm in rows if comm.startswith("soffice") and "Z" not in stat]
