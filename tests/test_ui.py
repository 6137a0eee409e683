"""The web UI in a real headless Chromium (Debian's ``chromium``, driven by Playwright's API):
upload a PDF and watch its job finish, search, open a hit and its heatmap, switch query tokens,
delete the document; with API keys set, nothing loads without the key; Swagger UI renders with
no asset from outside. Screenshots of each step go to ``artifacts/ui/`` (README's come from
here). Skipped, with the reason, where no Chromium is installed; ``.ci/run`` installs one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.main import create_app
from retrieval.config import Settings
from tests.documents import make_pdf
from tests.server import serving

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium installed (apt-get install chromium); .ci/run installs it"
)


def settings_for(tiny_model_dir, data_dir, **overrides) -> Settings:
    values = dict(
        model=str(tiny_model_dir),
        device="cpu",
        max_visual_tokens=64,
        data_dir=data_dir,
        render_workers=1,
        qdrant_url=None,
    )
    return Settings(_env_file=None, **{**values, **overrides})


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def until(page, predicate: str, timeout: float = 30) -> None:
    """Poll a JS expression until it is true. (Playwright's ``wait_for_function`` evaluates
    strings with ``eval``, which the page's CSP rightly forbids; ``evaluate`` is not.)"""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({predicate})"):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {predicate}")
        time.sleep(0.1)


class Watched:
    """A page that records console errors, CSP violations and requests to other origins."""

    def __init__(self, browser, base: str, **context) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on(
            "request",
            lambda r: (
                None if r.url.startswith((base, "blob:", "data:")) else self.foreign.append(r.url)
            ),
        )
        self.page.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => "
            "console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI))"
        )

    def _console(self, message) -> None:
        # A 404 is an answer the UI handles (no collection yet), not an error of the page.
        if message.type == "error" and "status of 404" not in message.text:
            self.errors.append(message.text)

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


def test_upload_search_heatmap_delete(browser, tiny_model_dir, tmp_path):
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(make_pdf([(595, 842), (842, 595), (612, 792)]))
    settings = settings_for(tiny_model_dir, tmp_path / "data")
    with serving(create_app(settings)) as base:
        ui = Watched(browser, base, viewport={"width": 1280, "height": 860})
        page = ui.page
        response = page.goto(base + "/")
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        page.get_by_role("button", name="Documents").click()
        page.set_input_files("#files", str(pdf))
        page.get_by_text("indexed (3 pages)").wait_for(timeout=60_000)
        page.locator("#doc-table tbody tr[data-doc]").first.wait_for()
        assert page.locator("#doc-table tbody tr[data-doc]").count() == 1
        ui.shot("01-uploaded")

        page.get_by_role("button", name="Search").click()
        page.get_by_label("Query").fill("a red square")
        page.get_by_label("Mode").select_option("exact")
        page.keyboard.press("Enter")  # the form submits from the keyboard
        cards = page.locator("#results li")
        cards.nth(2).wait_for()
        assert cards.count() == 3
        until(page, "[...document.querySelectorAll('#results img')].every(i => i.naturalWidth > 0)")
        ui.shot("02-results")

        cards.first.locator("button").click()
        dialog = page.locator("#viewer")
        dialog.wait_for()
        until(page, "document.querySelector('#page-large').naturalWidth > 0")
        combined = page.locator("#page-large").get_attribute("src")
        ui.shot("03-heatmap")
        tokens = page.locator("#tokens button")
        assert tokens.count() >= 2  # "all query tokens" and the best ones
        tokens.nth(1).click()
        until(
            page,
            f"document.querySelector('#page-large').src !== {combined!r} && "
            "document.querySelector('#page-large').naturalWidth > 0",
        )
        assert tokens.nth(1).get_attribute("aria-pressed") == "true"
        ui.shot("04-heatmap-one-token")
        page.keyboard.press("Escape")
        assert not dialog.is_visible()

        page.get_by_role("button", name="Documents").click()
        page.once("dialog", lambda d: d.accept())
        page.get_by_role("button", name="Delete report.pdf").click()
        page.get_by_text("Deleted report.pdf.").wait_for()
        until(page, "document.querySelectorAll('#doc-table tbody tr[data-doc]').length === 0")
        ui.shot("05-deleted")
        assert ui.errors == [] and ui.foreign == [], (ui.errors, ui.foreign)

        phone = Watched(browser, base, viewport={"width": 390, "height": 844}, is_mobile=True)
        phone.page.goto(base + "/")
        width = phone.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # nothing wider than a phone's screen
        phone.shot("06-phone")
        phone.close()
        ui.close()


def test_nothing_loads_without_the_api_key(browser, tiny_model_dir, tmp_path):
    settings = settings_for(tiny_model_dir, tmp_path / "data", api_keys="s3cret")
    with serving(create_app(settings)) as base:
        ui = Watched(browser, base)
        page = ui.page
        page.goto(base + "/")
        page.get_by_label("API key").wait_for()  # the key field appears
        assert "needs an API key" in page.locator("#status").inner_text()
        page.get_by_role("button", name="Documents").click()
        assert page.locator("#doc-table tbody tr[data-doc]").count() == 0
        ui.shot("07-key-required")
        page.get_by_label("API key").fill("wrong")
        page.get_by_role("button", name="Use").click()
        until(page, "document.querySelector('#status').classList.contains('error')")
        page.get_by_label("API key").fill("s3cret")
        page.get_by_role("button", name="Use").click()
        page.get_by_text("No documents yet").wait_for()  # answered: the key works
        ui.close()


def test_swagger_ui_renders_from_local_assets(browser, tiny_model_dir, tmp_path):
    with serving(create_app(settings_for(tiny_model_dir, tmp_path / "data"))) as base:
        ui = Watched(browser, base)
        ui.page.goto(base + "/docs")
        ui.page.locator(".swagger-ui .info .title").wait_for(timeout=30_000)
        ui.page.get_by_text("/v1/search").first.wait_for()
        ui.shot("08-api-docs")
        assert ui.foreign == [] and not [e for e in ui.errors if "CSP" in e]
        ui.close()
