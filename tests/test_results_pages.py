"""Numbers quoted in README.md and docs/ are those of their results files.

Each quoted table is rendered again from the committed results file by the
script that wrote it; a table edited by hand, or a results file rerun
without updating the pages, fails here.
"""

import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "results")
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import kd_settings  # noqa: E402
import quality  # noqa: E402
import quickstart  # noqa: E402

QUICKSTART_BACKENDS = ("tensorflow", "jax", "torch")


def read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def quickstart_reports():
    return [json.loads(read("docs", "results", f"quickstart_{b}.json"))
            for b in QUICKSTART_BACKENDS]


@pytest.mark.parametrize("page", ["README.md", os.path.join("docs", "getting-started.md")])
def test_the_quickstart_table_is_its_results_files(page):
    assert quickstart.markdown_table(quickstart_reports()) in read(page)


def test_the_quickstart_results_show_a_gain_of_more_than_two_standard_errors():
    for report in quickstart_reports():
        assert not report["quick"] and report["summary"]["seeds"] >= 5
        gain = report["summary"]["gain"]
        assert gain["mean"] > 2 * gain["standard_error"] > 0, report["backend"]
        assert report["seconds"] < 120, report["backend"]


def test_the_quality_page_is_its_results_file():
    report = json.loads(read("docs", "results", "quality.json"))
    assert not report["quick"] and len(report["seeds"]) >= 3
    assert len(report["tasks"]) >= 3
    assert read("docs", "quality.md") == quality.page(report)
    assert os.path.exists(os.path.join(ROOT, "docs", "quality.png"))


# Numbers with a unit that are targets or arithmetic, not measurements.
NOT_MEASURED = {
    "5%": "README.md: the speed benchmark's overhead target",
    "1.15 times": "README.md: the speed benchmark's precompute target",
    "0.8%": "docs/conventions.md: (B - 1) / B at B = 128",
    "2.3%": "docs/conventions.md: (B - 1)(B - 2) / B^2 at B = 128",
}


def results_values():
    """Every number of every committed results file."""
    values = set()

    def walk(node):
        if isinstance(node, dict):
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            values.add(abs(float(node)))

    for folder in (RESULTS, os.path.join(ROOT, "benchmarks", "results")):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json"):
                walk(json.loads(read(folder, name)))
    return values


def quoted_measurements(text):
    """The measurement-like numbers of a page's prose: those with three or
    more decimals, beside a ±, or with a unit (ms, MB, errors, %, times)."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`]*`", "", text)
    decimals = r"(?<![\w.])\d+\.\d{3,}(?![\w.])|(?<![\w.])\d+(?:\.\d+)?(?= ±)|(?<=± )\d+(?:\.\d+)?"
    units = r"(?<![\w.])\d+(?:\.\d+)?(?:x| ?ms| ?MB| ?GB| errors| points| seconds| minutes| ?%| times)(?!\w)"
    return re.findall(decimals, text), re.findall(units, text)


def pages():
    yield "README.md"
    for folder, _, names in os.walk(os.path.join(ROOT, "docs")):
        for name in sorted(names):
            if name.endswith(".md"):
                yield os.path.relpath(os.path.join(folder, name), ROOT)


@pytest.mark.parametrize("page", sorted(pages()))
def test_every_quoted_measurement_is_in_a_results_file(page):
    values = results_values()

    def backed(number):
        digits = len(number.split(".")[1]) if "." in number else 0
        return any(round(value, digits) == float(number) for value in values)

    decimals, units = quoted_measurements(read(page))
    unbacked = [n for n in decimals if not backed(n)]
    unbacked += [n for n in units
                 if n not in NOT_MEASURED and not backed(re.match(r"[\d.]+", n).group())]
    assert not unbacked, f"{page} quotes numbers no results file holds: {unbacked}"


def test_the_check_finds_unbacked_numbers():
    decimals, units = quoted_measurements(
        "accuracy 0.9123, gain +0.03 ± 0.01, 5.9 ms a step, `decay=0.999`"
    )
    assert decimals == ["0.9123", "0.03", "0.01"]
    assert units == ["5.9 ms"]


def test_the_settings_page_is_its_results_file():
    report = json.loads(read("docs", "results", "kd_settings.json"))
    assert not report["quick"] and len(report["seeds"]) >= 3
    assert kd_settings.markdown_tables(report) in read("docs", "choosing-settings.md")
