"""`der-pipeline report`: the README's results section, regenerated from the JSON files under results/ only."""
from __future__ import annotations

import json
from pathlib import Path

from der_pipeline.config import Params
from der_pipeline.evaluate.run import render_comparisons, render_table

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


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def results_section(p: Params, readme_dir: Path) -> str:
    from der_pipeline.evaluate.ablate import render_ablations
    from der_pipeline.evaluate.common import results_dir
    from der_pipeline.evaluate.cross_task import render as render_cross_task
    from der_pipeline.evaluate.curves import render_frontier
    from der_pipeline.evaluate.findings import render_findings

    parts = [START, ""]
    base = results_dir(p, "evaluate")
    found = sorted(base.glob("*/metrics.json")) if base.exists() else []
    if not found:
        parts.append("No results yet: run `dvc repro` (or `der-pipeline evaluate`).")
    else:
        parts += ["Every number below is read from the files under `results/` by `der-pipeline report`; "
                  "`dvc repro` rebuilds those files from the committed trees without calling an LLM.", ""]
    outs = [json.loads(path.read_text()) for path in found]
    cross = _load(results_dir(p, "cross_task") / "metrics.json")
    loaded = {o["dataset"]: _load(results_dir(p, "ablate", o["dataset"]) / "ablations.json") for o in outs}
    ablations = {ds: a for ds, a in loaded.items() if a}  # read once: the findings and the tables share them
    if outs:
        parts += render_findings(outs, ablations, cross)
    rel = lambda f: Path(f).resolve().relative_to(readme_dir.resolve()).as_posix()  # noqa: E731
    for out in outs:
        ds = out["dataset"]
        parts += [f"### {ds}", "", render_table(out), ""]
        sc = out["methods"].get("self-correction (best on train)", {})
        if "chosen_expert" in sc:
            parts += [f"Self-correction (best on train) uses {sc['chosen_expert']}.", ""]
        share = out["methods"][out["der_method"]]["first_expert_share"]
        picks = ", ".join(f"{e} {s:.0%}" for e, s in zip(out["experts"], share))
        parts += [f"DER's first expert on the test split (mean over seeds): {picks}.", ""]
        parts += [f"Paired bootstrap over the {out['test_queries']} test queries ({p.evaluate.bootstrap} resamples):",
                  "", render_comparisons(out), ""]
        parts += proposal_block(ds)
        frontier = _load(results_dir(p, "curves", ds) / "frontier.json")
        if frontier:
            png = results_dir(p, "curves", ds) / "cost_accuracy.png"
            parts += [f"#### {ds}: quality against cost", "", f"![quality against cost, {ds}]({rel(png)})", "",
                      render_frontier(frontier), ""]
        if ds in ablations:
            parts += [f"#### {ds}: ablations", "", render_ablations(ablations[ds], p), ""]
        parts += tree_block(p, ds)
    if cross and "skipped" not in cross:
        parts += ["### One router across tasks", "", render_cross_task(cross), ""]
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
