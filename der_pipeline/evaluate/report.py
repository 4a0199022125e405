"""`der-pipeline report`: the README's results section, regenerated from results/*/metrics.json only."""
from __future__ import annotations

import json
from pathlib import Path

from der_pipeline.config import Params
from der_pipeline.evaluate.run import render_table

START = "<!-- results:start (written by `der-pipeline report`; do not edit by hand) -->"
END = "<!-- results:end -->"

# The proposal's own Table 1 (BoolQ, experts of 3B to 7B parameters; its cost unit is its own).
PROPOSAL_TABLE_1 = {
    "boolq": [("Round-Robin", "89.6%", "1.46", "9.90"), ("Self-Correction", "88.3%", "1.25", "1.19"),
              ("DER (Agent)", "85.6%", "1.44", "11.3")],
}


def proposal_block(dataset: str) -> list[str]:
    rows = PROPOSAL_TABLE_1.get(dataset)
    if not rows:
        return [f"The proposal reports no {dataset} numbers.", ""]
    lines = ["The proposal's Table 1 for comparison (its experts have 3B to 7B parameters, 2 to 50 times "
             "ours, and its cost unit differs, so only the shape compares):", "",
             "| Method (proposal) | Accuracy | Avg Calls | Avg Cost |", "|---|---|---|---|"]
    lines += [f"| {m} | {a} | {c} | {k} |" for m, a, c, k in rows]
    return lines + [""]


def tree_block(p: Params, dataset: str) -> list[str]:
    """The scored tree itself: mean task score of every path (first expert x refining expert)."""
    from der_pipeline.evaluate.inspect_tree import path_summary, render_matrix

    try:
        summary = path_summary(p, dataset)
    except FileNotFoundError:
        return []
    return [f"Task score of every path of the {dataset} tree (all {int(summary['n'].max())} queries, both splits; "
            "rows: first expert, columns: the expert that refines its answer):", "",
            render_matrix(p, dataset, summary, "score"), ""]


def results_section(p: Params, readme_dir: Path) -> str:
    results = p.path("results")
    parts = [START, ""]
    found = sorted(results.glob("*/metrics.json")) if results.exists() else []
    if not found:
        parts.append("No results yet: run `dvc repro` (or `der-pipeline evaluate`).")
    for path in found:
        out = json.loads(path.read_text())
        rel = lambda f: Path(path.parent / f).resolve().relative_to(readme_dir.resolve()).as_posix()  # noqa: E731
        parts += [f"### {out['dataset']}", "", render_table(out), "",
                  f"![quality against cost, {out['dataset']}]({rel('cost_accuracy.png')})", ""]
        sc = out["methods"].get("self-correction (best on train)", {})
        if "chosen_expert" in sc:
            parts += [f"Self-correction (best on train) uses {sc['chosen_expert']}.", ""]
        share = out["methods"][out["der_method"]]["first_expert_share"]
        picks = ", ".join(f"{e} {s:.0%}" for e, s in zip(out["experts"], share))
        parts += [f"DER's first expert on the test split: {picks}.", ""]
        parts += proposal_block(out["dataset"])
        parts += tree_block(p, out["dataset"])
    parts.append(END)
    return "\n".join(parts)


def update_readme(p: Params, readme: Path, write: bool = True) -> bool:
    """Replace the text between the markers; returns whether it changed."""
    readme = Path(readme)
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme}: no results markers; add the two lines\n{START}\n{END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + results_section(p, readme.parent) + tail
    changed = new != text
    if changed and write:
        readme.write_text(new)
    return changed
