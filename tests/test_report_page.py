"""`report --html/--markdown`: one self-contained page with the figures, tables and warnings of real results."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from robustdeploy.defenses.squeeze import SqueezeConfig
from robustdeploy.defenses.squeeze_attack import AdaptiveSqueezeAttack
from robustdeploy.evaluation.detector import evaluate_detector
from robustdeploy.evaluation.evaluate import EvalConfig, evaluate
from robustdeploy.export import ExportConfig, export_bundle
from tests.conftest import assert_one_line_error, cli


class Outline(HTMLParser):
    """Images, tables, headings and the warnings block of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images, self.tables, self.headings, self.warnings, self._tag = [], 0, [], [], None

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        self._tag = tag
        if tag == "img":
            self.images.append(attrs["src"])
        self.tables += tag == "table"

    def handle_data(self, data) -> None:
        if self._tag in ("h2", "h3"):
            self.headings.append(data)
        if self._tag == "li":
            self.warnings.append(data)


@pytest.fixture(scope="module")
def results(bundle_dir, run_dir, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("report")
    evaluate(EvalConfig(bundle=bundle_dir, limit=48, batch_size=48, epsilons=(0.05, 0.1), attacks=("fgsm", "pgd"),
                        attack_params={"steps": 5}, out=folder / "eval.json"))
    interrupted = folder / "interrupted.json"  # what a killed run leaves: its sets so far, not complete
    evaluate(EvalConfig(bundle=bundle_dir, limit=48, batch_size=48, epsilons=(0.1,), out=interrupted,
                        attack_params={"steps": 3}))
    data = json.loads(interrupted.read_text())
    interrupted.write_text(json.dumps({**data, "complete": False, "figure": None}))
    detector = folder / "squeeze"
    export_bundle(ExportConfig(run_dir=run_dir, out=detector, detector="squeeze", squeeze=SqueezeConfig(bits=4,
                                                                                                        median=0)))
    evaluate_detector(EvalConfig(bundle=detector, epsilons=(0.1,), limit=48, batch_size=48,
                                 out=folder / "detector.json", attack_params={"steps": 5}),
                      AdaptiveSqueezeAttack(steps=5, targets=1, restarts=1))
    return [folder / "eval.json", interrupted, folder / "detector.json"]


def test_html_page_has_figures_tables_and_warnings(results, tmp_path) -> None:
    proc = cli("report", *results, "--html", tmp_path / "r.html", "--markdown", tmp_path / "r.md")
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "r.html").read_text()
    outline = Outline()
    outline.feed(page)
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing to fetch
    pngs = [base64.b64decode(src.split(",", 1)[1]) for src in outline.images]
    assert all(src.startswith("data:image/png;base64,") for src in outline.images)
    assert all(png.startswith(b"\x89PNG") for png in pngs)
    # eval: curves + its example figure; interrupted: curves + a drawn grid; detector: grid + 2 runtimes x 2 sets
    assert len(pngs) >= 2 + 2 + 1 + 4
    assert "Bundle cnn-digits" in outline.headings and "Bundle squeeze" in outline.headings
    assert outline.tables >= 5 and "robust %" in page and "stopped fooling" in page
    assert page.index("id='warnings'") < page.index("<h2>Bundle")  # warnings at the top
    assert any("interrupted" in w for w in outline.warnings)
    markdown = (tmp_path / "r.md").read_text()
    assert "| eps | runtime | after attack |" in markdown and "interrupted" in markdown


def test_report_in_headless_chromium(results, tmp_path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the page is checked by parsing")
    page = tmp_path / "r.html"
    assert cli("report", *results[:1], "--html", page).returncode == 0
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert len(re.findall(r"<img [^>]*src=\"data:image/png", dom)) >= 2 and "<table>" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,2400", page.as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_report_mistakes_are_one_line(results, tmp_path) -> None:
    assert_one_line_error(cli("report", tmp_path / "none.json", "--html", tmp_path / "r.html"), "not found")
    assert_one_line_error(cli("report", results[0]), "--html")
    assert not (tmp_path / "r.html").exists()
