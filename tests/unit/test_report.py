"""`report` writes two files: the results page (docs/results.md beside the README, whole) and the README's
headline block (between its markers). A README with the markers missing, out of order or repeated is a
ValueError naming the file and the marker (one line from the CLI, no traceback), raised before any result is
read or anything written; each file is replaced only when it changed, `--check` writes nothing; the same
results give the same bytes; and the headline's row is read off the dataset's metrics.json."""
import json

import pytest
from conftest import REPO, run_cli

from der_pipeline.evaluate import report
from der_pipeline.evaluate.report import END, RESULTS_PAGE, START, headline_lines, update_readme


@pytest.fixture()
def no_results(monkeypatch):
    """The two writers replaced: these tests are about the files and the markers, and must never reach the
    results. Records the folder each was asked to make its links relative to."""
    calls = []

    def block(p, readme_dir):
        calls.append(("readme", readme_dir))
        return f"{START}\nTHE HEADLINE\n{END}"

    def page(p, page_dir):
        calls.append(("page", page_dir))
        return "# Results\n\nTHE TABLES\n"

    monkeypatch.setattr(report, "headline_block", block)
    monkeypatch.setattr(report, "results_page", page)
    return calls


@pytest.mark.parametrize("text, problem", [
    ("# A README\n\nNo markers here.\n",
     f"the start marker {START!r} and the end marker {END!r} are missing"),
    (f"# A README\n{START}\nold\n", f"the end marker {END!r} is missing"),
    (f"# A README\nold\n{END}\n", f"the start marker {START!r} is missing"),
    (f"# A README\n{END}\nold\n{START}\n", "the end marker comes before the start marker"),
    (f"# A README\n{START}\n{END}\n{START}\n{END}\n",
     "the markers appear more than once (2 start, 2 end); keep one pair"),
])
def test_a_readme_without_its_markers_is_a_value_error_naming_the_file_and_the_marker(
        tmp_path, repo_params, no_results, text, problem):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(ValueError) as info:
        update_readme(repo_params, readme)
    message = str(info.value)
    assert message.startswith(f"{readme}: cannot place the results section: {problem}. ")
    assert message.endswith(f"each on its own: {START} and {END}")
    assert readme.read_text() == text and no_results == []  # untouched, and nothing was computed
    assert not (tmp_path / RESULTS_PAGE).exists()  # nor the results page written


def test_a_missing_readme_names_itself_and_the_option(tmp_path, repo_params, no_results):
    with pytest.raises(FileNotFoundError, match=r"nope\.md: no such file .*--readme"):
        update_readme(repo_params, tmp_path / "nope.md")


def test_the_headline_block_and_the_results_page_are_written_only_when_they_change(tmp_path, repo_params, no_results):
    readme, page = tmp_path / "README.md", tmp_path / "docs" / "results.md"
    readme.write_text(f"# Title\n\nintro\n\n{START}\nstale numbers\n{END}\n\n## After\n")
    assert update_readme(repo_params, readme, write=False) is True  # --check: out of date, nothing written
    assert "stale numbers" in readme.read_text() and not page.exists()
    assert update_readme(repo_params, readme) is True
    assert readme.read_text() == f"# Title\n\nintro\n\n{START}\nTHE HEADLINE\n{END}\n\n## After\n"
    assert page.read_text() == "# Results\n\nTHE TABLES\n"
    assert update_readme(repo_params, readme) is False  # up to date now
    page.write_text("# Results\n\nedited by hand\n")  # a stale page alone makes the pair stale
    assert update_readme(repo_params, readme, write=False) is True
    assert page.read_text() == "# Results\n\nedited by hand\n"
    assert update_readme(repo_params, readme) is True and page.read_text() == "# Results\n\nTHE TABLES\n"
    # links are made relative to the README's folder in the README, and to docs/ on the page
    assert set(no_results) == {("readme", tmp_path), ("page", tmp_path / "docs")}


def test_the_cli_reports_missing_markers_in_one_line_without_a_traceback(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    proc = run_cli(["report", "--params", str(REPO / "params.yaml"), "--readme", str(readme), "--check"],
                   cwd=tmp_path, check=False, timeout=300, env={"DER_DEBUG": ""})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{readme}: cannot place the results section: the start marker" in proc.stderr


def test_the_same_results_give_the_same_bytes(repo_params):
    docs = REPO / RESULTS_PAGE.parent
    first = report.results_page(repo_params, docs), report.headline_block(repo_params, REPO)
    assert (report.results_page(repo_params, docs), report.headline_block(repo_params, REPO)) == first
    page, block = first
    assert block.startswith(START) and block.endswith(END) and "](docs/results.md)" in block
    assert page.startswith("<!-- Written by `der-pipeline report`") and page.count("\n# ") == 1
    assert "](../results/curves/" in page  # the plots, linked from docs/ to where they are
    assert "not in these results yet" in block and "not in these results yet" in page


def _metrics(dataset="toy"):
    """A results file as evaluate writes it (evaluate/results.py), with hand-set numbers: the committed BoolQ
    file's shape, its methods replaced."""
    out = json.loads((REPO / "results" / "evaluate" / "boolq" / "metrics.json").read_text())
    template = out["methods"]["der"]

    def method(accuracy, cost):
        return {**template, "accuracy": accuracy, "cost_gflops": cost}

    comparison = {"b_is": "", "n_queries": 40}
    out.update({"dataset": dataset, "metric": "accuracy", "test_queries": 40, "seeds": [2, 1],
                "best_single": "single:big",
                "methods": {"der": method(0.8124, 25.0), "single:big": method(0.85, 100.0),
                            "single:small": method(0.5, 10.0), "cascade": method(0.8, 40.0),
                            "round_robin": method(0.7, 110.0)},
                "roles": {"der": "der", "single:big": "baseline", "single:small": "baseline",
                          "cascade": "baseline", "round_robin": "baseline"},
                "comparisons": [{"a": "der", "b": "round_robin", "diff": 0.1, "ci_low": 0.0, "ci_high": 0.2,
                                 "p_value": 0.04, **comparison},
                                {"a": "der", "b": "single:big", "diff": -0.0374, "ci_low": -0.1, "ci_high": 0.025,
                                 "p_value": 0.3, **comparison}]})
    return out


def test_the_headline_row_is_read_off_the_datasets_metrics(tmp_path, repo_params):
    for ds in ("toy", "abc"):
        (tmp_path / "results" / "evaluate" / ds).mkdir(parents=True)
        (tmp_path / "results" / "evaluate" / ds / "metrics.json").write_text(json.dumps(_metrics(ds)))
    p = repo_params.override("paths", results=str(tmp_path / "results"))
    lines = headline_lines(p, tmp_path)
    rows = [line for line in lines if line.startswith("| abc") or line.startswith("| toy")]
    row = (" (accuracy, 40) | 0.812 | 25% | big (100 GFLOPs) | 0.850 | 0.800 | 40% "
           "| -0.037 (-0.100 to +0.025, p 0.300) |")
    assert rows == ["| abc" + row, "| toy" + row]  # one row per dataset, in the order of their folders' names
    assert "seeds [1, 2]" in lines[0]
    assert not any("Quality against cost" in line for line in lines)  # no curves: no plot links
    assert headline_lines(repo_params.override("paths", results=str(tmp_path / "none")), tmp_path)[0].startswith(
        "No results yet")
