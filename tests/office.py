"""Office and OpenDocument files for the tests: OpenDocument written from scratch (valid ODF: a
zip with its mimetype first, a manifest and its content), and every other format written by
LibreOffice itself from those."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

_NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0" '
    'xmlns:svg="urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0" '
    'xmlns:style="urn:oasis:names:tc:opendocument:xmlns:style:1.0" '
    'xmlns:fo="urn:oasis:names:tc:opendocument:xmlns:xsl-fo-compatible:1.0" '
    'xmlns:presentation="urn:oasis:names:tc:opendocument:xmlns:presentation:1.0"'
)


def _odf(path: Path, mimetype: str, body: str, styles: str = "") -> Path:
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {_NS} '
        f'office:version="1.2"><office:automatic-styles>{styles}</office:automatic-styles>'
        f"<office:body>{body}</office:body></office:document-content>"
    )
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest '
        'xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" '
        'manifest:version="1.2"><manifest:file-entry manifest:full-path="/" '
        f'manifest:media-type="{mimetype}"/><manifest:file-entry '
        'manifest:full-path="content.xml" manifest:media-type="text/xml"/></manifest:manifest>'
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), mimetype, compress_type=zipfile.ZIP_STORED)
        z.writestr("META-INF/manifest.xml", manifest, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("content.xml", content, compress_type=zipfile.ZIP_DEFLATED)
    return path


def odt(path: Path, pages: list[str]) -> Path:
    """A text document, one paragraph a page (a page break before each but the first)."""
    styles = (
        '<style:style style:name="Break" style:family="paragraph">'
        '<style:paragraph-properties fo:break-before="page"/></style:style>'
    )
    brk = ' text:style-name="Break"'
    paragraphs = "".join(
        f"<text:p{brk if i else ''}>{escape(t)}</text:p>" for i, t in enumerate(pages)
    )
    body = f"<office:text>{paragraphs}</office:text>"
    return _odf(path, "application/vnd.oasis.opendocument.text", body, styles)


def odp(path: Path, slides: list[str]) -> Path:
    """A presentation, one text box a slide."""
    pages = "".join(
        f'<draw:page draw:name="s{i}"><draw:frame svg:x="2cm" svg:y="2cm" svg:width="22cm" '
        f'svg:height="6cm"><draw:text-box><text:p>{escape(t)}</text:p></draw:text-box>'
        "</draw:frame></draw:page>"
        for i, t in enumerate(slides)
    )
    body = f"<office:presentation>{pages}</office:presentation>"
    return _odf(path, "application/vnd.oasis.opendocument.presentation", body)


def ods(path: Path, sheets: list[str]) -> Path:
    """A spreadsheet, one sheet a text (each sheet prints on a page of its own)."""
    tables = "".join(
        f'<table:table table:name="Sheet{i + 1}"><table:table-row><table:table-cell '
        f'office:value-type="string"><text:p>{escape(t)}</text:p></table:table-cell>'
        "</table:table-row></table:table>"
        for i, t in enumerate(sheets)
    )
    body = f"<office:spreadsheet>{tables}</office:spreadsheet>"
    return _odf(path, "application/vnd.oasis.opendocument.spreadsheet", body)


def convert(source: Path, suffix: str, out: Path) -> Path:
    """``source`` saved by LibreOffice as ``suffix`` (docx, doc, rtf, pptx, ppt, xlsx, xls)."""
    program = shutil.which("soffice")
    assert program, "LibreOffice is not installed"
    profile = (out / ".lo-profile").as_uri()
    subprocess.run(
        [program, f"-env:UserInstallation={profile}", "--headless", "--convert-to", suffix,
         "--outdir", str(out), str(source)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    made = out / f"{source.stem}.{suffix}"
    assert made.is_file(), f"LibreOffice did not write {made.name}"
    return made
