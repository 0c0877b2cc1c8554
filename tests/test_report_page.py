"""`report --html/--markdown`: one self-contained page with the figures, tables and warnings of real results."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustdeploy.bench import BenchConfig, bench
from robustdeploy.defenses.squeeze import SqueezeConfig
from robustdeploy.defenses.squeeze_attack import AdaptiveSqueezeAttack
from robustdeploy.evaluation.plans.compare import CompareConfig, compare
from robustdeploy.evaluation.plans.detector import evaluate_detector
from robustdeploy.evaluation.plans.evaluate import EvalConfig, evaluate
from robustdeploy.export import ExportConfig, export_bundle
from tests.conftest import assert_one_line_error, cli


class Outline(HTMLParser):
    """Images, tables, headings and the warnings block of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images, self.alts, self.tables, self.headings, self.warnings, self._tag = [], [], 0, [], [], None

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        self._tag = tag
        if tag == "img":
            self.images.append(attrs["src"])
            self.alts.append(attrs["alt"])
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
    bench(BenchConfig(bundle_dir, ("torch", "ort-cpu"), (1, 8), warmup=2, iterations=12, out=folder / "bench.json"))
    compare(CompareConfig(bundle_dir, runtimes=("torch", "ort-cpu"), attacks=("fgsm",), epsilons=(0.1,), limit=48,
                          latency_iterations=6, out=folder / "compare.json"))
    return [folder / "eval.json", interrupted, folder / "detector.json", folder / "bench.json",
            folder / "compare.json"]


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
    # eval: curves + its example figure; interrupted: curves + a drawn grid; detector: grid + 2 runtimes x 2 sets;
    # bench: latency distributions; compare: curves + example figure + latency distributions
    assert len(pngs) >= 2 + 2 + 1 + 4 + 1 + 3
    assert sum(alt.startswith("Latency distributions") for alt in outline.alts) == 2  # bench and compare
    assert "Bundle cnn-digits" in outline.headings and "Bundle squeeze" in outline.headings
    assert "bench.json: latency" in outline.headings and "p99 ms" in page
    assert outline.tables >= 7 and "robust %" in page and "stopped fooling" in page
    assert page.index("id='warnings'") < page.index("<h2>Bundle")  # warnings at the top
    assert any("interrupted" in w for w in outline.warnings)
    markdown = (tmp_path / "r.md").read_text()
    assert "| eps | runtime | after attack |" in markdown and "interrupted" in markdown


def test_report_in_headless_chromium(results, tmp_path) -> None:
    """The page as a browser renders it: its figures and tables are in the DOM, and the screenshot shows them."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the page is checked by parsing")
    page = tmp_path / "r.html"
    assert cli("report", *results, "--html", page).returncode == 0
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    source = Outline()
    source.feed(page.read_text())
    rendered = Outline()
    rendered.feed(dom)
    assert len(rendered.images) == len(source.images) >= 10 and rendered.tables == source.tables >= 7
    assert any(alt.startswith("Latency distributions") for alt in rendered.alts)
    assert "Bundle cnn-digits" in rendered.headings and "bench.json: latency" in rendered.headings
    bare = tmp_path / "bare.html"  # the same page without its figures, to tell what the figures add
    bare.write_text(re.sub(r"<figure>.*?</figure>", "", page.read_text()))
    ink, colour = zip(*(_screenshot(flags, p, tmp_path / f"{p.stem}.png") for p in (page, bare)))
    assert 0.01 < ink[0] < 0.5 and colour[0] > 3 * colour[1] + 0.0005, (ink, colour)  # the plots' coloured lines


def _screenshot(flags: list, page: Path, shot: Path) -> tuple[float, float]:
    """Shares of dark pixels (text, rules, axes) and of coloured ones in a 1200 x 1600 screenshot of `page`."""
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()], capture_output=True,
                   timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1600)
    pixels = np.asarray(image).reshape(-1, 3).astype(np.int16)
    return float((pixels < 200).all(1).mean()), float((pixels.max(1) - pixels.min(1) > 80).mean())


def test_report_mistakes_are_one_line(results, tmp_path) -> None:
    assert_one_line_error(cli("report", tmp_path / "none.json", "--html", tmp_path / "r.html"), "not found")
    assert_one_line_error(cli("report", results[0]), "--html")
    bench = json.loads(results[3].read_text())
    old = tmp_path / "old-bench.json"  # written before bench kept every timed run
    old.write_text(json.dumps({**bench, "format": "robustdeploy-bench/1"}))
    assert_one_line_error(cli("report", old, "--html", tmp_path / "r.html"), "not a robustdeploy-bench/2", "re-run")
    del bench["rows"][1]["samples_ms"]
    results[3].with_name("cut.json").write_text(json.dumps(bench))
    assert_one_line_error(cli("report", results[3].with_name("cut.json"), "--html", tmp_path / "r.html"),
                          "rows[1] lacks 'samples_ms'")
    assert not (tmp_path / "r.html").exists()
