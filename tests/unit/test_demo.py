"""`der-pipeline demo` without --rerun: the committed results at once, or a clear message when there are none."""
from conftest import REPO, run_cli


def test_demo_shows_the_committed_results_tables():
    proc = run_cli(["demo"], cwd=REPO, timeout=120)
    committed = (REPO / "results" / "evaluate" / "boolq" / "table.md").read_text().strip()
    assert committed in proc.stdout
    assert "DER (agent" in proc.stdout


def test_demo_without_results_says_what_to_run(tmp_path):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"]["results"] = str(tmp_path / "none")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = run_cli(["demo", "--params", str(tmp_path / "params.yaml")], cwd=REPO, check=False)
    assert proc.returncode == 1 and "der-pipeline demo --rerun" in proc.stderr
