"""report.html: parsed strictly from a real run, escaping of untrusted text, sorting in a real headless browser."""
from __future__ import annotations

import shutil
import subprocess

import html5lib
import pandas as pd
import pytest
from test_report import TINY, make_record, synthetic_samples, write_synthetic_run

from evalsuite import report
from evalsuite.__main__ import main
from evalsuite.records import store

EVIL_OUTPUT = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
EVIL_QUESTION = '</pre><script>alert(3)</script>'


def parse(path):
    """The page as an element tree; html5lib in strict mode raises on any HTML5 parse error."""
    return html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(path.read_text())


def board_rows(doc):
    return doc.findall(".//table[@id='board']/tbody/tr")


@pytest.mark.slow
def test_page_of_a_real_run(e2e_run, capsys):
    assert main(["table", "--run", "e2e", "--results-dir", str(e2e_run.parent)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"report: {e2e_run / 'report.html'}"
    doc = parse(e2e_run / "report.html")
    records, _ = store.read_run(e2e_run)
    assert sorted(r.get("data-cell") for r in board_rows(doc)) == sorted(r.cell_id for r in records if r.ok)
    flips = pd.read_csv(e2e_run / "flips.csv")
    assert int(doc.find(".//section[@id='flips-browser']").get("data-total")) == len(flips)
    assert len(doc.findall(".//div[@data-flip]")) == len(flips)  # a run this small shows every flipped item
    links = [el.get(a) for el in doc.iter() for a in ("src", "href") if el.get(a)]
    assert links and not [x for x in links if x.lower().startswith(("http://", "https://", "//"))]


def test_untrusted_task_text_and_model_output_render_as_text(tmp_path):
    """A generation holding a script and an attribute break-out, a question closing the <pre> it sits in."""
    for cid, bits, values in (("base", 16, TINY[16]), ("q4", 4, TINY[2])):
        rows = synthetic_samples({"gsm8k_cot_offline": values["gsm8k_cot_offline"]})
        for row in rows:
            row.update(doc={"question": EVIL_QUESTION}, resps=[[EVIL_OUTPUT]], filtered_resps=[EVIL_OUTPUT[:20]])
        store.write_jsonl(store.samples_path(tmp_path, cid), rows)
        store.write_record(tmp_path, make_record(cid, bits, {"gsm8k_cot_offline": values["gsm8k_cot_offline"]}))
    report.export_all(tmp_path)
    doc = parse(tmp_path / "report.html")
    assert len(doc.findall(".//script")) == 1  # the page's own
    assert [img.get("src")[:22] for img in doc.iter("img")] == ["data:image/png;base64,"] * 2  # the figures only
    assert not [el for el in doc.iter() if any(k.lower().startswith("on") for k in el.attrib)]
    generations = [pre.text for pre in doc.iter("pre") if pre.get("class") == "generation"]
    assert generations and set(generations) == {EVIL_OUTPUT}
    assert {pre.text for pre in doc.iter("pre") if pre.get("class") == "question"} == {EVIL_QUESTION}


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
CLICK = "<script>document.querySelector('#board th[data-col=\"average\"] a').click();</script>\n</body>"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's package)")
def test_a_click_on_a_header_sorts_the_leaderboard_in_a_real_browser(tmp_path):
    run_dir = write_synthetic_run(tmp_path / "run")
    report.export_all(run_dir)
    page = tmp_path / "clicked.html"
    page.write_text((run_dir / "report.html").read_text().replace("</body>", CLICK))
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    doc = html5lib.parse(dom, namespaceHTMLElements=False)
    body = doc.find("body")
    assert body.get("data-ready") == "1" and body.get("data-script-error") is None
    header = doc.findall(".//table[@id='board']/thead/tr/th")
    column = [th.get("data-col") for th in header].index("average")
    assert header[column].get("aria-sort") == "ascending"
    averages = [float(row.findall("td")[column].get("data-sort")) for row in board_rows(doc)]
    before = [float(row.findall("td")[column].get("data-sort")) for row in board_rows(parse(run_dir / "report.html"))]
    assert averages == sorted(before) != before


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's package)")
def test_a_sort_query_parameter_sorts_like_a_header_click_in_a_real_browser(tmp_path):
    """``?sort=-COLUMN`` (a link anyone can share) sorts descending, missing values last, before anyone clicks."""
    run_dir = write_synthetic_run(tmp_path / "run")
    report.export_all(run_dir)
    url = (run_dir / "report.html").as_uri() + "?sort=-bits_per_weight"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    doc = html5lib.parse(dom, namespaceHTMLElements=False)
    assert doc.find("body").get("data-ready") == "1"
    header = doc.findall(".//table[@id='board']/thead/tr/th")
    column = [th.get("data-col") for th in header].index("bits_per_weight")
    assert header[column].get("aria-sort") == "descending"
    shown = [float(row.findall("td")[column].get("data-sort")) for row in board_rows(doc)]
    assert shown == sorted(shown, reverse=True) and len(set(shown)) > 1
    assert [r.get("data-cell") for r in board_rows(doc)][:2] in (["tiny16", "tinyb16"], ["tinyb16", "tiny16"])
