"""`der-pipeline inspect`: check a scored tree before trusting it.

Per path: mean task score and parse rate (share of answers the task parser
could read), as a matrix of first expert (rows) by refining expert (columns),
with hop 1 alone in the first column. A path that fails for a format reason
shows up as a low parse rate. Also per path: the stored nodes skipped because
they were made under other settings (their key is not current).
"""
from __future__ import annotations

import polars as pl

from der_pipeline.artifacts import dataset_params, expected_paths, load_scores
from der_pipeline.config import Params
from der_pipeline.generate.tree import read_tree


def path_summary(p: Params, dataset: str) -> pl.DataFrame:
    p = dataset_params(p, dataset)
    df = pl.from_arrow(load_scores(p, dataset))
    return (df.with_columns(parsed=(pl.col("parsed_answer").str.len_chars() > 0).cast(pl.Float64))
              .group_by("path").agg(pl.len().alias("n"), pl.col("task_score").mean().alias("score"),
                                     pl.col("parsed").mean().alias("parse_rate"),
                                     pl.col("bertscore_f1").mean().alias("bertscore"))
              .sort("path"))


def render_matrix(p: Params, dataset: str, summary: pl.DataFrame, column: str) -> str:
    p = dataset_params(p, dataset)
    vals = dict(zip(summary["path"].to_list(), summary[column].to_list()))
    return _matrix(p, vals, ".3f")


def _matrix(p: Params, vals: dict, fmt: str) -> str:
    names = p.expert_names()
    head = "| first \\ then | alone | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for a in names:
        cells = [format(vals.get(a, float("nan")), fmt)] + [format(vals.get(f"{a}>{b}", float("nan")), fmt)
                                                             for b in names]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def inspect(p: Params, dataset: str) -> str:
    p = dataset_params(p, dataset)
    tree = read_tree(p, dataset)
    stale = {path: tree.stale.get(path, 0) for path in expected_paths(p.expert_names())}
    out = (f"### {dataset}: tree\n\n{tree.prepared.num_rows} queries with a complete current tree, "
           f"{tree.incomplete} without; {sum(stale.values())} stored node(s) skipped as stale "
           f"(made under other settings), per path:\n\n{_matrix(p, stale, 'd')}\n\n")
    s = path_summary(p, dataset)
    n = int(s["n"].max()) if s.height else 0
    return out + (f"### {dataset}: {n} queries, mean task score per path\n\n{render_matrix(p, dataset, s, 'score')}\n\n"
                  f"### {dataset}: parse rate per path\n\n{render_matrix(p, dataset, s, 'parse_rate')}\n")

