"""`der-pipeline gc` on a copy of the committed SST-2 tree (real Parquet, the real adapter's keys)."""
import shutil

from conftest import REPO, run_cli

from der_pipeline.generate.gc import collect
from der_pipeline.generate.tree import read_tree


def _copy(repo_params, tmp_path):
    data = tmp_path / "data"
    for rel in ("prepared/sst2.parquet", "tree/sst2", "specialists/sst2"):
        src, dst = REPO / "data" / rel, data / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return repo_params.override("paths", data=str(data)), data / "tree" / "sst2"


def _files(folder):
    return {f.name: f.read_bytes() for f in folder.glob("shard-*.parquet")}


def test_dry_run_removes_nothing_and_gc_removes_only_stale_nodes(repo_params, tmp_path):
    p, folder = _copy(repo_params, tmp_path)
    before = read_tree(p, "sst2")
    files = _files(folder)
    dry = collect(p, "sst2", dry_run=True)
    assert _files(folder) == files  # not a byte moved
    assert dry.removed > 0 and dry.kept == before.nodes.num_rows
    done = collect(p, "sst2", dry_run=False)
    assert (done.nodes, done.kept, done.removed_by_path) == (dry.nodes, dry.kept, dry.removed_by_path)
    after = read_tree(p, "sst2")
    assert after.nodes.sort_by([("qid", "ascending"), ("path", "ascending")]).equals(
        before.nodes.sort_by([("qid", "ascending"), ("path", "ascending")]))  # the same current nodes
    assert after.stale == {} and sum(f.stat().st_size for f in folder.glob("shard-*")) < sum(map(len, files.values()))
    assert collect(p, "sst2", dry_run=True).removed == 0


def test_the_cli_says_what_it_would_remove(repo_params, tmp_path):
    p, folder = _copy(repo_params, tmp_path)
    import yaml
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"].update(data=str(tmp_path / "data"), source_data=str(REPO / raw["paths"]["source_data"]))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    files = _files(folder)
    out = run_cli(["gc", "--params", str(tmp_path / "params.yaml"), "-d", "sst2", "--dry-run"], cwd=tmp_path)
    assert "would remove" in out.stdout and f"{read_tree(p, 'sst2').nodes.num_rows} current kept" in out.stdout
    assert _files(folder) == files
