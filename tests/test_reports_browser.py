"""The demo's reports in a real headless Chromium (skipped without chromium/playwright): each page loads
offline with no console error and no failed request, every image loads, every local link and anchor
resolves, and the QC ratings survive a reload and export as a TSV. Screenshots go to the CI artefacts."""

from __future__ import annotations

from tests.browser import browser, check_page, click_download, open_page  # noqa: F401 (browser: fixture)


def test_participant_reports_load_cleanly(browser, demo_run):  # noqa: F811
    for page in sorted(demo_run.glob("sub-*.html")):
        check = check_page(browser, page, screenshot=f"report_{page.stem}.png")
        assert check.ok, check.problems()
        assert any(link.startswith("group_report.html") for link in check.links)


def test_group_report_loads_links_and_exports_ratings(browser, demo_run):  # noqa: F811
    with open_page(browser, demo_run / "group_report.html", screenshot="report_group.png") as (page, check):
        selects = page.locator("select.rating")
        n = selects.count()
        assert n == 10  # 9 cord images and 1 FLAIR in the demo
        selects.nth(0).select_option("fail")
        selects.nth(1).select_option("pass")
        page.reload()
        assert page.locator("select.rating").nth(0).input_value() == "fail"  # kept in localStorage
        exported = click_download(page, "#export-ratings")
        header = page.locator("table.t th.sortable").first
        header.click()  # sorting must not raise
    assert check.ok, check.problems()
    lines = exported.text.strip().splitlines()
    assert exported.name == "qc_ratings.tsv" and lines[0] == "image\ttask\tparticipant_id\trating"
    assert len(lines) == 1 + n
    ratings = [line.split("\t")[3] for line in lines[1:]]
    assert sorted(ratings) == sorted(["fail", "pass"] + ["n/a"] * (n - 2))
