"""The DVC-tracked aggregates over datasets (metrics/metrics.json, metrics/curves.csv): merged, never clobbered.

A stage run for some datasets (`evaluate -d boolq`) replaces those datasets' entries and keeps every other
benchmark's, so a one-dataset run cannot delete the others' tracked numbers. Only the built-in benchmarks
are aggregated: a custom dataset's numbers live in its own results/<stage>/<name>/ folder, so trying the
README's "your own data" recipe leaves every tracked benchmark artifact byte-identical. A benchmark that
params no longer samples is dropped, as a full run would drop it.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from der_pipeline.config import DATASETS, Params
from der_pipeline.io import atomic_write_bytes


def aggregated(p: Params, datasets) -> list[str]:
    """The datasets an aggregate holds entries for: the active built-in benchmarks, in params order."""
    present = set(datasets)
    return [d for d in p.data.active() if d in DATASETS and d in present]


def _readable_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); restore it with `git checkout -- {path}` "
                         f"or rerun the stage for every dataset (`dvc repro`)") from None
    if not isinstance(old, dict):
        raise ValueError(f"{path}: expected a JSON object of datasets; restore it with `git checkout -- {path}`")
    return old


def merge_aggregate_json(p: Params, path: Path, entries: dict[str, dict]) -> None:
    """metrics.json: ``entries`` (dataset -> summary) replace theirs; the other benchmarks' are kept."""
    old = _readable_json(Path(path))
    merged = {**old, **entries}
    keep = aggregated(p, merged)
    body = json.dumps({d: merged[d] for d in keep}, indent=2) + "\n"
    if not Path(path).exists() or body != Path(path).read_text():
        atomic_write_bytes(Path(path), body.encode())


def merge_aggregate_csv(p: Params, path: Path, rows: list[dict]) -> None:
    """curves.csv: the rows of the datasets in ``rows`` replace theirs; the other benchmarks' rows are kept."""
    path = Path(path)
    fresh = {r["dataset"] for r in rows}
    old: list[dict] = []
    if path.exists():
        with path.open(newline="") as fh:
            old = [r for r in csv.DictReader(fh) if r.get("dataset") not in fresh]
    by_ds: dict[str, list[dict]] = {}
    for r in old + rows:
        by_ds.setdefault(r["dataset"], []).append(r)
    keep = aggregated(p, by_ds)
    out_rows = [r for d in keep for r in by_ds[d]]
    buf = io.StringIO()
    if out_rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0] if rows else out_rows[0]), lineterminator="\r\n")
        w.writeheader()
        w.writerows(out_rows)
    if not path.exists() or buf.getvalue().encode() != path.read_bytes():
        atomic_write_bytes(path, buf.getvalue().encode())
