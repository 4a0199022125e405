"""The tracked aggregates (metrics/metrics.json, metrics/curves.csv) merge: a one-dataset run keeps the others."""
import json

from der_pipeline.evaluate.aggregate import merge_aggregate_csv, merge_aggregate_json


def _params(repo_params, tmp_path, **extra):
    p = repo_params.override("paths", metrics=str(tmp_path))
    datasets = {name: {"sample": spec.sample} for name, spec in repo_params.data.datasets.items()}
    for name, spec in extra.items():
        datasets[name] = spec
    return p.override("data", datasets=datasets)


def test_a_one_dataset_run_keeps_every_other_benchmark(repo_params, tmp_path):
    p = _params(repo_params, tmp_path, mine={"sample": 2, "source": "mine.jsonl", "answer_type": "span"})
    path = tmp_path / "metrics.json"
    full = {d: {"der_accuracy": i / 10} for i, d in enumerate(p.data.active()) if d != "mine"}
    merge_aggregate_json(p, path, full)
    before = path.read_bytes()
    merge_aggregate_json(p, path, {"mine": {"der_accuracy": 1.0}})  # the README's custom-data recipe
    assert path.read_bytes() == before  # a custom dataset's numbers stay in its own results folder
    merge_aggregate_json(p, path, {"boolq": {"der_accuracy": 0.9}})
    after = json.loads(path.read_text())
    assert list(after) == list(full)  # params order, nothing lost
    assert after["boolq"] == {"der_accuracy": 0.9}
    assert all(after[d] == full[d] for d in full if d != "boolq")


def test_a_benchmark_switched_off_is_dropped(repo_params, tmp_path):
    p = _params(repo_params, tmp_path)
    path = tmp_path / "metrics.json"
    merge_aggregate_json(p, path, {d: {"x": 1} for d in p.data.active()})
    off = _params(repo_params, tmp_path, xsum={"sample": 0})
    merge_aggregate_json(off, path, {"boolq": {"x": 2}})
    assert "xsum" not in json.loads(path.read_text())


def test_curves_csv_merges_by_dataset_and_keeps_its_bytes(repo_params, tmp_path):
    p = _params(repo_params, tmp_path, mine={"sample": 2, "source": "mine.jsonl", "answer_type": "span"})
    path = tmp_path / "curves.csv"
    rows = [{"dataset": d, "method": "der", "alpha": a, "cost_norm": 0.5, "accuracy": 0.7}
            for d in ("boolq", "sst2") for a in (0.0, 0.1)]
    merge_aggregate_csv(p, path, rows)
    before = path.read_bytes()
    merge_aggregate_csv(p, path, [dict(r) for r in rows if r["dataset"] == "sst2"])  # an unchanged rerun
    assert path.read_bytes() == before
    merge_aggregate_csv(p, path, [{**r, "dataset": "mine"} for r in rows[:2]])
    assert path.read_bytes() == before
    merge_aggregate_csv(p, path, [{**r, "accuracy": 0.8} for r in rows if r["dataset"] == "boolq"])
    text = path.read_text()
    assert text.count("boolq,der") == 2 and text.count("sst2,der") == 2 and "0.8" in text
