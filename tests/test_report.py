"""`report` on READMEs with the results markers missing, out of order or repeated: a ValueError naming the file
and the marker (one line from the CLI, no traceback), raised before any result is read; and the section
replaced between correct markers, only when it changed."""
import pytest

from der_pipeline.evaluate import report
from der_pipeline.evaluate.report import END, START, update_readme

from conftest import REPO, run_cli


@pytest.fixture()
def no_results(monkeypatch):
    """``results_section`` replaced: these tests are about the markers, and must never reach the results."""
    calls = []

    def section(p, readme_dir):
        calls.append(readme_dir)
        return f"{START}\nTHE RESULTS\n{END}"

    monkeypatch.setattr(report, "results_section", section)
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


def test_a_missing_readme_names_itself_and_the_option(tmp_path, repo_params, no_results):
    with pytest.raises(FileNotFoundError, match=r"nope\.md: no such file .*--readme"):
        update_readme(repo_params, tmp_path / "nope.md")


def test_the_section_between_the_markers_is_replaced_and_the_rest_kept(tmp_path, repo_params, no_results):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nintro\n\n{START}\nstale numbers\n{END}\n\n## After\n")
    assert update_readme(repo_params, readme, write=False) is True  # --check: out of date, nothing written
    assert "stale numbers" in readme.read_text()
    assert update_readme(repo_params, readme) is True
    assert readme.read_text() == f"# Title\n\nintro\n\n{START}\nTHE RESULTS\n{END}\n\n## After\n"
    assert update_readme(repo_params, readme) is False  # up to date now
    assert no_results == [tmp_path] * 3  # image links are made relative to the README's folder


def test_the_cli_reports_missing_markers_in_one_line_without_a_traceback(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    proc = run_cli(["report", "--params", str(REPO / "params.yaml"), "--readme", str(readme), "--check"],
                   cwd=tmp_path, check=False, timeout=300, env={"DER_DEBUG": ""})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{readme}: cannot place the results section: the start marker" in proc.stderr
