"""Headless-browser checks of the HTML pages the app writes (reports), for the tests.

Drives the system's chromium (Debian's ``chromium`` package; ``.ci/run`` and ``make browser`` install
it) through Playwright's Python package; Playwright never downloads a browser. Without chromium or
Playwright, :func:`require_chromium` skips the test with the reason.

Typical use::

    from tests.browser import browser, check_page, click_download  # noqa: F401 (browser: a fixture)

    def test_report(browser, tmp_path):
        check = check_page(browser, out / "sub-01.html", screenshot="sub-01.png")
        assert check.ok, check.problems()
        with open_page(browser, out / "group_report.html") as (page, check):
            tsv = click_download(page, "#export-ratings").text

A page is offline-clean when it has no console error, no uncaught exception, no failed request
(a request that failed, an HTTP status >= 400, or any request that is not ``file:``/``data:``/
``blob:`` — those are blocked: pages must work offline), every ``<img>`` has loaded (natural width
> 0) and every local link points to an existing file (and, with ``follow_links``, a page that is itself
clean; ``#anchors`` to an existing id). Screenshots go to :func:`artefacts_dir` (``$NEUROSEG_ARTEFACTS``,
default ``<repo>/work/artefacts/``), which CI keeps.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Schemes a page may load from; anything else is blocked and reported.
LOCAL_SCHEMES = ("file", "data", "blob", "about")
TIMEOUT_MS = 15_000


def chromium_path() -> str | None:
    """The chromium executable: ``$NEUROSEG_CHROMIUM`` or ``chromium``/``chromium-browser`` on PATH."""
    configured = os.environ.get("NEUROSEG_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> str:
    """The chromium path, or ``pytest.skip`` with the reason (Playwright or chromium missing)."""
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("browser tests need Playwright's Python package: pip install -e '.[test]'")
    path = chromium_path()
    if path is None:
        pytest.skip("browser tests need chromium (not found on PATH): run `make browser` "
                    "or `apt-get install chromium`")
    return path


def artefacts_dir() -> Path:
    """``$NEUROSEG_ARTEFACTS`` or ``<repo>/work/artefacts`` (created)."""
    folder = Path(os.environ.get("NEUROSEG_ARTEFACTS") or ROOT / "work" / "artefacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def artefact_path(name: Path | str) -> Path:
    """An absolute path as given; a relative one (e.g. ``"group_report.png"``) under :func:`artefacts_dir`."""
    path = Path(name)
    path = path if path.is_absolute() else artefacts_dir() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def launch() -> Iterator[object]:
    """A headless chromium (Playwright ``Browser``); skips the test when none is available."""
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    args = ["--disable-dev-shm-usage", "--allow-file-access-from-files"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # chromium refuses to run as root with its sandbox
    with sync_playwright() as playwright:
        # Chromium's singleton socket must fit in 108 bytes: a TMPDIR deep in a test's work dir (set by
        # an in-process run of the app) makes it abort, so it gets the system's short one.
        env = {**os.environ, "TMPDIR": "/tmp" if os.path.isdir("/tmp") else os.environ.get("TMPDIR", "")}
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=args, env=env)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser():
    """One browser per test module (import this fixture into the module)."""
    with launch() as launched:
        yield launched


@dataclass
class PageCheck:
    """What :func:`check_page` / :func:`open_page` found on one page (lists stay live in ``open_page``)."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # href of every <a>, as written
    broken_links: list[str] = field(default_factory=list)  # local targets missing (or unclean, if followed)
    screenshot: Path | None = None

    def problems(self) -> list[str]:
        """One line per problem, for an assertion message."""
        named = {"console error": self.console_errors, "page error": self.page_errors,
                 "failed request": self.failed_requests, "broken image": self.broken_images,
                 "broken link": self.broken_links}
        return [f"{self.url}: {what}: {item}" for what, items in named.items() for item in items]

    @property
    def ok(self) -> bool:
        return not self.problems()


@dataclass(frozen=True)
class Downloaded:
    """A file the page downloaded: its suggested name, text, and where it was saved (if asked)."""

    name: str
    text: str
    path: Path | None = None


def _record(page, check: PageCheck) -> None:
    """Watch ``page``: console errors, uncaught exceptions, failed and non-local requests."""
    def on_console(message) -> None:
        if message.type == "error":
            check.console_errors.append(message.text)

    blocked: set[str] = set()

    def on_failed(request) -> None:
        if request.url not in blocked:
            check.failed_requests.append(f"{request.url} ({request.failure or 'failed'})")

    def on_response(response) -> None:
        if response.status >= 400:
            check.failed_requests.append(f"{response.url} (HTTP {response.status})")

    def on_request(request) -> None:
        # file: is not routed, http(s) is (below); anything else (ws:, ftp:) is reported here.
        if urlsplit(request.url).scheme not in LOCAL_SCHEMES + ("http", "https"):
            check.failed_requests.append(f"{request.url} (not local)")

    def route(route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in LOCAL_SCHEMES:
            route.continue_()
        else:  # the pages must work offline: nothing leaves the machine
            blocked.add(url)
            check.failed_requests.append(f"{url} (not local: blocked)")
            route.abort("blockedbyclient")

    page.on("console", on_console)
    page.on("pageerror", lambda error: check.page_errors.append(str(error)))
    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    page.on("request", on_request)
    page.route("**/*", route)


_IMAGES_JS = """async () => {
  const images = Array.from(document.images);
  for (const img of images) { img.loading = "eager"; }
  await Promise.all(images.map(img => img.decode().catch(() => null)));
  return images.filter(img => !img.complete || img.naturalWidth === 0)
               .map(img => img.getAttribute("src") || img.currentSrc || "(no src)");
}"""
_LINKS_JS = """() => Array.from(document.querySelectorAll("a[href]"))
  .map(a => [a.getAttribute("href"), a.href])"""


def _file_path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))


def _check_links(page, check: PageCheck, follow_links: bool, browser) -> None:
    here = _file_path(page.url)
    followed: set[Path] = set()
    for href, resolved in page.evaluate(_LINKS_JS):
        check.links.append(href)
        parts = urlsplit(resolved)
        if parts.scheme != "file":
            continue  # external (http, mailto) links are not requests; they are listed in links only
        target = _file_path(resolved)
        if not target.exists():
            check.broken_links.append(f"{href} (no file {target})")
            continue
        if target == here:
            if parts.fragment and not page.evaluate("id => !!document.getElementById(id)", unquote(parts.fragment)):
                check.broken_links.append(f"{href} (no element with id {parts.fragment!r})")
            continue
        if follow_links and target.suffix in (".html", ".htm") and target not in followed:
            followed.add(target)
            other = check_page(browser, target, follow_links=False, wait_idle=False)
            check.broken_links += [f"{href} -> {line}" for line in other.problems()]


@contextlib.contextmanager
def open_page(browser, path: Path | str, screenshot: Path | str | None = None, follow_links: bool = True,
              viewport: tuple[int, int] = (1280, 900), wait_idle: bool = True) -> Iterator[tuple[object, PageCheck]]:
    """Load ``path`` (a local HTML file) in a fresh context; yields ``(page, check)`` once loaded.

    ``check`` is filled on loading (images, links) and keeps recording console errors, page errors
    and requests while the block drives the page. ``screenshot`` (a file name under
    :func:`artefacts_dir`, or an absolute path) is the full page, taken once loaded. ``wait_idle``
    also waits for the page's own requests after ``load`` (fetches of data files; 0.5 s at least).
    """
    path = Path(path).resolve()
    context = browser.new_context(accept_downloads=True, viewport={"width": viewport[0], "height": viewport[1]})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        check = PageCheck(url=path.as_uri())
        _record(page, check)
        page.goto(check.url, wait_until="load")
        if wait_idle:
            with contextlib.suppress(Exception):  # best effort: a page that polls never goes idle
                page.wait_for_load_state("networkidle", timeout=3_000)
        check.broken_images += page.evaluate(_IMAGES_JS)
        _check_links(page, check, follow_links, browser)
        if screenshot is not None:
            check.screenshot = artefact_path(screenshot)
            page.screenshot(path=str(check.screenshot), full_page=True)
        yield page, check
    finally:
        context.close()


def check_page(browser, path: Path | str, screenshot: Path | str | None = None,
               follow_links: bool = True, wait_idle: bool = True) -> PageCheck:
    """Load ``path``, check it (see the module doc) and close it; arguments as in :func:`open_page`."""
    with open_page(browser, path, screenshot=screenshot, follow_links=follow_links,
                   wait_idle=wait_idle) as (_, check):
        return check


def click_download(page, selector: str, save_to: Path | str | None = None, timeout_ms: int = TIMEOUT_MS) -> Downloaded:
    """Click ``selector`` and capture the download it starts (e.g. a Blob TSV made by JavaScript).

    ``save_to`` (a file name under :func:`artefacts_dir`, or an absolute path) keeps a copy.
    Raises Playwright's ``TimeoutError`` when no download starts.
    """
    with page.expect_download(timeout=timeout_ms) as info:
        page.click(selector)
    download = info.value
    failure = download.failure()
    if failure:
        raise AssertionError(f"download from {selector} failed: {failure}")
    text = Path(download.path()).read_text(encoding="utf-8")
    saved = None
    if save_to is not None:
        saved = artefact_path(save_to)
        download.save_as(str(saved))
    return Downloaded(name=download.suggested_filename, text=text, path=saved)
