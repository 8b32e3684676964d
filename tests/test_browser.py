"""Self-tests of the headless-browser harness (tests/browser.py) on small static pages: a good page
passes (image, links, a JavaScript Blob download, a screenshot); each kind of fault makes its field
non-empty, so the report tests can fail. Skipped, with the reason, without chromium or Playwright."""

from __future__ import annotations

import base64

import pytest

from tests import browser as harness
from tests.browser import browser, check_page, click_download, open_page  # noqa: F401 (browser: fixture)

#: A 2 x 2 red PNG.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEklEQVR4nGP4z8DwHwyBNAMDAGhZCfd/KFLmAAAAAElFTkSuQmCC")

GOOD = """<!doctype html><html><head><meta charset="utf-8"><title>good</title></head><body>
<h1 id="top">Report</h1><img src="img/dot.png" alt="dot" width="40" height="40" loading="lazy">
<p><a href="second.html">second page</a> <a href="#top">top</a> <a href="https://example.org/docs">docs</a></p>
<button id="export">Export ratings</button>
<script>
document.getElementById("export").addEventListener("click", () => {
  const tsv = "participant_id\\trating\\nsub-01\\tgood\\n";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([tsv], {type: "text/tab-separated-values"}));
  a.download = "ratings.tsv";
  document.body.appendChild(a); a.click(); a.remove();
});
</script></body></html>"""
SECOND = """<!doctype html><html><head><meta charset="utf-8"><title>second</title></head><body>
<a href="good.html">back</a></body></html>"""
BAD = {
    "broken_image": '<img src="img/missing.png" alt="missing">',
    "console_error": '<script>console.error("something went wrong")</script>',
    "page_error": '<script>throw new Error("uncaught")</script>',
    "missing_link": '<a href="nowhere.html">nowhere</a> <a href="#no-such-id">anchor</a>',
    "external_request": '<script>fetch("http://example.invalid/data.json").catch(() => null)</script>',
}
FIELD = {"broken_image": "broken_images", "console_error": "console_errors", "page_error": "page_errors",
         "missing_link": "broken_links", "external_request": "failed_requests"}


def _page(body: str) -> str:
    return f'<!doctype html><html><head><meta charset="utf-8"><title>t</title></head><body>{body}</body></html>'


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "img").mkdir()
    (root / "img" / "dot.png").write_bytes(PNG)
    (root / "good.html").write_text(GOOD)
    (root / "second.html").write_text(SECOND)
    for name, body in BAD.items():
        (root / f"{name}.html").write_text(_page(body))
    (root / "links_to_bad.html").write_text(_page('<a href="console_error.html">a page with an error</a>'))
    return root


def test_good_page_passes_with_screenshot_and_download(browser, site, tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROSEG_ARTEFACTS", str(tmp_path / "artefacts"))
    with open_page(browser, site / "good.html", screenshot="good.png") as (page, check):
        downloaded = click_download(page, "#export", save_to="ratings.tsv")
    assert check.ok, check.problems()
    assert check.links == ["second.html", "#top", "https://example.org/docs"]
    assert check.screenshot == tmp_path / "artefacts" / "good.png"
    assert check.screenshot.read_bytes().startswith(b"\x89PNG") and check.screenshot.stat().st_size > 1000
    assert downloaded.name == "ratings.tsv"
    assert downloaded.text == "participant_id\trating\nsub-01\tgood\n"
    assert downloaded.path.read_text() == downloaded.text


@pytest.mark.parametrize("fault", sorted(BAD))
def test_each_fault_is_reported(browser, site, fault):
    check = check_page(browser, site / f"{fault}.html")
    assert not check.ok
    assert getattr(check, FIELD[fault]), (fault, check)


def test_missing_link_and_anchor_named(browser, site):
    check = check_page(browser, site / "missing_link.html")
    assert len(check.broken_links) == 2 and "nowhere.html" in check.broken_links[0]
    assert "no-such-id" in check.broken_links[1]


def test_external_request_is_blocked(browser, site):
    check = check_page(browser, site / "external_request.html")
    assert check.failed_requests[0] == "http://example.invalid/data.json (not local: blocked)"


def test_followed_link_to_a_bad_page_is_broken(browser, site):
    check = check_page(browser, site / "links_to_bad.html")
    assert check.broken_links and "console error" in check.broken_links[0], check
    assert check_page(browser, site / "links_to_bad.html", follow_links=False).ok


def test_skips_without_chromium(monkeypatch, tmp_path):
    monkeypatch.delenv("NEUROSEG_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.skip.Exception, match="need chromium"):
        harness.require_chromium()


def test_skips_without_playwright(monkeypatch):
    monkeypatch.setattr(harness.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(pytest.skip.Exception, match="Playwright"):
        harness.require_chromium()
