"""How many queries of each dataset's seeded sample order have a complete current tree, from the first on.

A dataset's sample is the first N queries of a seeded hash order (data/prepare.py), so a larger sample
contains the smaller one. During a long generation, set `data.datasets.<name>.sample` to this prefix
before `dvc repro`: the committed trees then match params.yaml, and a fresh clone is up to date.

    python scripts/complete_prefix.py -d sst2 -d squad      # run after `der-pipeline prepare` of the target
"""
from __future__ import annotations

import argparse

from der_pipeline.artifacts import load_prepared
from der_pipeline.config import load_params
from der_pipeline.data.prepare import unit_hash
from der_pipeline.generate.tree import read_tree


def complete_prefix(params_path: str, dataset: str) -> tuple[int, int, int]:
    """(complete prefix, complete queries anywhere in the sample, queries prepared)."""
    p = load_params(params_path)
    read = read_tree(p, dataset)
    done = set(read.prepared["qid"].to_pylist())
    order = sorted(load_prepared(p, dataset)["qid"].to_pylist(), key=lambda q: unit_hash("sample", p.data.seed, q))
    prefix = next((i for i, q in enumerate(order) if q not in done), len(order))
    return prefix, len(done), len(order)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-d", "--dataset", action="append", required=True, help="a dataset name (repeatable)")
    ap.add_argument("-p", "--params", default="params.yaml")
    args = ap.parse_args()
    for ds in args.dataset:
        prefix, complete, prepared = complete_prefix(args.params, ds)
        print(f"{ds}: complete prefix {prefix} (complete {complete} of {prepared} prepared)")


if __name__ == "__main__":
    main()
