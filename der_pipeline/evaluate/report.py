"""`der-pipeline report`: the results page (docs/results.md) and the README's headline block, regenerated from
the JSON files under results/ only.

The results page is written whole; the README keeps its own text and only the block between its two markers
(``START``, ``END``) is rewritten: one row per dataset, the headline. Both are pure functions of the files
read (sorted, fixed formats), so the same results give the same bytes, and ``update_readme(write=False)``
(`report --check`) says whether either file is stale.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from der_pipeline.artifacts import dataset_params
from der_pipeline.config import Params
from der_pipeline.evaluate.results import EvaluateResults, read_budgets, read_results
from der_pipeline.evaluate.run import render_comparisons, render_table

START = "<!-- results:start (written by `der-pipeline report`; do not edit by hand) -->"
END = "<!-- results:end -->"
RESULTS_PAGE = Path("docs") / "results.md"  # the results page, relative to the README's folder

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


TABLE_1_METHODS = (("round_robin", "Round-Robin"), ("self_correction_best", "Self-Correction"), ("der", "DER (Agent)"))


def table1_block(outs: list[dict]) -> list[str]:
    """The proposal's Table 1 (method, score, calls, cost) filled for every dataset with results, on the test split."""
    if not outs:
        return []
    lines = ["The proposal's Table 1, filled for every dataset with a tree (test split; score in the dataset's "
             "metric, mean over seeds; cost in GFLOPs per query):", "",
             "| Dataset | Metric | Method | Score | Avg Calls | Avg Cost |", "|---|---|---|---|---|---|"]
    for out in outs:
        for mid, label in TABLE_1_METHODS:
            m = out["methods"].get(mid)
            if m:
                lines.append(f"| {out['dataset']} | {out['metric']} | {label} | {m['accuracy']:.3f} | {m['calls']:.2f} "
                             f"| {m['cost_gflops']:.1f} |")
    return lines + [""]


def tree_block(p: Params, dataset: str) -> list[str]:
    """The scored tree itself: mean task score of every path (first expert x refining expert)."""
    p = dataset_params(p, dataset)
    from der_pipeline.evaluate.inspect_tree import path_summary, render_matrix

    try:
        summary = path_summary(p, dataset)
    except FileNotFoundError:
        return []
    return [f"Task score of every path of the {dataset} tree (all {int(summary['n'].max())} queries, both splits; "
            "rows: first expert, columns: the expert that refines its answer):", "",
            render_matrix(p, dataset, summary, "score"), "", parse_rate_line(dataset, summary), ""]


PARSE_RATE_FLOOR = 0.95  # below this share of readable answers, a path fails for a format reason


def parse_rate_line(dataset: str, summary) -> str:
    """Whether the task parser read at least PARSE_RATE_FLOOR of every path's answers, naming the paths below."""
    rates = dict(zip(summary["path"].to_list(), summary["parse_rate"].to_list()))
    low = {path: r for path, r in sorted(rates.items(), key=lambda kv: kv[1]) if r < PARSE_RATE_FLOOR}
    lowest = min(rates, key=rates.get)
    if not low:
        return (f"Parse rate (`der-pipeline inspect -d {dataset}`): the parser reads at least {PARSE_RATE_FLOOR:.0%} "
                f"of the answers on every path (lowest: {lowest}, {rates[lowest]:.1%}).")
    return (f"Parse rate (`der-pipeline inspect -d {dataset}`): {len(low)} of {len(rates)} paths fall below "
            f"{PARSE_RATE_FLOOR:.0%}: " + ", ".join(f"{path} {r:.1%}" for path, r in low.items())
            + "; their unreadable answers score 0.")


def chosen_block(out: dict) -> list[str]:
    """What the fitted baselines settled on, on the train split."""
    m, lines = out["methods"], []
    if "chosen" in m.get("self_correction_best", {}):
        lines.append(f"Self-correction (best on train) uses {m['self_correction_best']['chosen']}.")
    if "chosen" in m.get("best_fixed", {}):
        lines.append(f"The best fixed path on the train split is {m['best_fixed']['chosen']} "
                     "('a>b': b refines a's answer; 'a>fresh:b': b answers afresh after a).")
    c = m.get("cascade", {}).get("chosen")
    if c:
        lines.append(f"The confidence cascade fitted on the train split: {c['first']} answers"
                     + (f"; when its {c['signal']} is under {c['threshold']:.3f}, {c['then']} answers afresh."
                        if c["then"] else ", never escalating."))
    return [" ".join(lines), ""] if lines else []


def signals_block(out: dict) -> list[str]:
    """How well each confidence signal predicts that an expert's own first answer is right."""
    auroc = out.get("signal_auroc")
    if not auroc:
        return []
    names = [k for k in next(iter(auroc.values())) if k != "right_share"]
    lines = [f"How well each expert's own confidence predicts that its answer is right (AUROC over the "
             f"{out['train_queries']} train queries' first answers; 0.5 = no information, under 0.5 the signal reads "
             f"backwards; n/a: constant, or one class only):", "",
             "| Expert | right | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    f = lambda v: "n/a" if v is None else (f"{v:.2f} (backwards)" if v < 0.5 else f"{v:.2f}")  # noqa: E731
    for e, row in auroc.items():
        lines.append(f"| {e} | {row['right_share']:.0%} | " + " | ".join(f(row[k]) for k in names) + " |")
    return lines + [""]


def training_block(p: Params, out: dict, rel) -> list[str]:
    """Whether PPO learned: the kept iteration's cross-validated return against the untrained policy's, per seed."""
    rows = [t for t in out.get("training", []) if t.get("best_val_return") is not None]
    if not rows:
        return []
    from der_pipeline.artifacts import model_dir

    lines = [f"PPO cross-validated on the train split ({p.ppo.selection_folds} id-hash folds), per seed: the "
             "iteration kept and its greedy return on the held-out folds (the mean over folds), against the "
             "untrained policy's; then the kept policy's out-of-fold utility over the best fixed path's "
             "(score - alpha x cost, per query, ± its standard error) and the policy DER uses: the learned one "
             "where that edge is over one standard error, else the fixed path (`ppo.fallback`, see \"The router\"):",
             "", "| Seed | Kept iteration | Held-out return (kept) | Held-out return (untrained) | "
             "Edge over the fixed path (± SE) | DER uses |", "|---|---|---|---|---|---|"]
    for t in rows:
        u, c = t.get("untrained_val_return"), t.get("fixed_path_check")
        edge = "n/a" if not c else f"{c['gain']:+.4f} ± {c['se']:.4f}"
        uses = {"learned": "the learned policy", "best_fixed_path": f"the fixed path ({c['path_name']})" if c else
                "the fixed path"}.get(t.get("policy") or "learned")
        lines.append(f"| {t['seed']} | {t['selected_iteration']} of {t['iterations']} | {t['best_val_return']:.3f} | "
                     + ("n/a" if u is None else f"{u:.3f}") + f" | {edge} | {uses} |")
    png = model_dir(p, out["dataset"]) / f"seed-{rows[0]['seed']}" / "training_curve.png"
    if png.exists():
        lines += ["", f"![training curve, {out['dataset']}, seed {rows[0]['seed']}]({rel(png)})"]
    return lines + [""]


def pooled_tune_block(p: Params, datasets: list[str]) -> list[str]:
    """The tune stage's candidates ranked by their mean out-of-fold utility over the datasets (tune.pooled)."""
    from der_pipeline.artifacts import results_dir
    from der_pipeline.evaluate.tune import current_settings, pooled, render_pooled

    tuned = {ds: t for ds in datasets if (t := _load(results_dir(p, "tune", ds) / "tune.json"))}
    out = pooled(tuned)
    if out is None:
        return []
    return ["#### Choosing the settings: one for every dataset", "", render_pooled(out, current_settings(p)), ""]


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _outs(p: Params) -> list[EvaluateResults]:
    """Every dataset's results/evaluate/<ds>/metrics.json, in the order of their folders' names."""
    from der_pipeline.artifacts import results_dir

    base = results_dir(p, "evaluate")
    found = sorted(base.glob("*/metrics.json")) if base.exists() else []
    return [read_results(path) for path in found]


def _relative(base_dir: Path):
    """A file's path as a link from a page in ``base_dir`` (``../`` where the file is outside it)."""
    base = Path(base_dir).resolve()
    return lambda f: Path(os.path.relpath(Path(f).resolve(), base)).as_posix()


def _pct(v: float) -> str:
    return f"{v:.0%}"


def headline_rows(outs: list[dict]) -> list[dict]:
    """One row per dataset of ``outs`` (``_outs``): DER, the strongest single expert on the test split, the
    confidence cascade and DER's paired difference from the strongest expert, read off its metrics.json."""
    rows = []
    for out in outs:
        m, strong = out["methods"], out["best_single"]
        der, best, cascade = m["der"], m[strong], m.get("cascade")
        comp = next((c for c in out["comparisons"] if c["b"] == strong), None)
        rows.append({"dataset": out["dataset"], "metric": out["metric"], "test_queries": out["test_queries"],
                     "der": der["accuracy"], "der_share": der["cost_gflops"] / best["cost_gflops"],
                     "strong": strong.removeprefix("single:"), "strong_score": best["accuracy"],
                     "strong_gflops": best["cost_gflops"],
                     "cascade": cascade and cascade["accuracy"],
                     "cascade_share": cascade and cascade["cost_gflops"] / best["cost_gflops"], "vs": comp})
    return rows


def budget_lines(p: Params, datasets: list[str]) -> list[str]:
    """The headline's second table: DER, the confidence cascade and the random mix fitted on the train split
    to one budget (``budget.headline_share`` of the reference expert's cost), read off each dataset's
    budgets.json; a sentence where the budgets stage has not run."""
    from der_pipeline.artifacts import results_dir
    from der_pipeline.evaluate.budgets import noninferiority_text

    share = p.budget.headline_share
    found = {ds: read_budgets(path) for ds in datasets
             if (path := results_dir(p, "budgets", ds) / "budgets.json").exists()}
    if not found:
        return ["The budget table (DER, the cascade and the random mix at equal cost, and DER's non-inferiority to "
                "the reference expert) comes with the budgets stage and is not in these results yet."]
    lines = [f"At a budget of {share:g} of the reference expert's cost, every router fitted to it on the train split "
             "(score at cost share on the test split; non-inferiority: the paired bootstrap's one-sided 95% lower "
             f"bound of DER minus the reference against -{p.budget.margin:g}):", "",
             "| Dataset | Reference (score) | DER | Confidence cascade | Random mix | DER against the reference |",
             "|---|---|---|---|---|---|"]
    for ds in datasets:
        b = found.get(ds)
        row = None if b is None else next((r for r in b["rows"] if r["share"] == share), None)
        if row is None:
            why = ("not run" if b is None else b.get("skipped") or f"no row at {share:g}")
            lines.append(f"| {ds} | | {why} | | | |")
            continue
        m = row["methods"]
        cells = [f"{m[k]['score']:.3f} at {m[k]['cost_share']:.2f}" for k in ("der", "cascade", "random_mix")]
        lines.append(f"| {ds} | {b['reference']} ({b['reference_score']:.3f}) | {' | '.join(cells)} | "
                     f"{noninferiority_text(row['der_vs_reference'], b['margin'])} |")
    return lines


def headline_lines(p: Params, base_dir: Path, results_link: str | None = None) -> list[str]:
    """The headline table, with links (made relative to ``base_dir``) to each dataset's cost-quality plot and,
    with ``results_link``, to the results page."""
    from der_pipeline.artifacts import results_dir

    outs = _outs(p)
    rows = headline_rows(outs)
    if not rows:
        return ["No results yet: run `dvc repro` (or `der-pipeline evaluate`), then `der-pipeline report`."]
    seeds = sorted({s for out in outs for s in out["seeds"]})
    lines = [f"The committed results, on each dataset's held-out test split (DER: the mean over seeds {seeds}; cost "
             "share: the mean cost per query over the strongest single expert's on that split; the difference: a "
             "paired bootstrap over the test queries):", "",
             "| Dataset (metric, test queries) | DER | DER's cost share | Strongest expert | Its score "
             "| Confidence cascade | Cascade's cost share | DER - strongest (95% CI, p) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = r["vs"]
        diff = ("n/a" if vs is None else
                f"{vs['diff']:+.3f} ({vs['ci_low']:+.3f} to {vs['ci_high']:+.3f}, p {vs['p_value']:.3f})")
        cascade = "n/a" if r["cascade"] is None else f"{r['cascade']:.3f}"
        cshare = "n/a" if r["cascade_share"] is None else _pct(r["cascade_share"])
        lines.append(f"| {r['dataset']} ({r['metric']}, {r['test_queries']}) | {r['der']:.3f} | {_pct(r['der_share'])} "
                     f"| {r['strong']} ({r['strong_gflops']:.0f} GFLOPs) | {r['strong_score']:.3f} | {cascade} "
                     f"| {cshare} | {diff} |")
    lines += ["", *budget_lines(p, [r["dataset"] for r in rows]), ""]
    rel = _relative(base_dir)
    plots = [(r["dataset"], results_dir(p, "curves", r["dataset"]) / "cost_accuracy.png") for r in rows]
    frontiers = {ds: results_dir(p, "curves", ds) / "frontier.json" for ds, _ in plots}
    shown = [f"[{ds}]({rel(png)})" for ds, png in plots if png.exists() and frontiers[ds].exists()]
    tail = []
    if shown:
        tail.append("Quality against cost over the alpha sweep: " + ", ".join(shown) + ".")
    if results_link:
        tail.append(f"Every table, per dataset: [the results page]({results_link}).")
    return lines + ([" ".join(tail)] if tail else [])


def headline_block(p: Params, readme_dir: Path) -> str:
    """The README's generated block: the markers around the headline, links relative to ``readme_dir``."""
    link = RESULTS_PAGE.as_posix()
    return "\n".join([START, "", *headline_lines(p, readme_dir, link), "", END])


def results_section(p: Params, page_dir: Path) -> str:
    """The results page's generated body: findings, every dataset's tables and plots (image links relative to
    ``page_dir``), the tuning tables and the cross-task router."""
    from der_pipeline.artifacts import results_dir
    from der_pipeline.evaluate.ablate import render_ablations
    from der_pipeline.evaluate.cross_task import render as render_cross_task
    from der_pipeline.evaluate.curves import render_frontier
    from der_pipeline.evaluate.findings import render_findings

    overview, parts = [], []
    outs = _outs(p)
    cross = _load(results_dir(p, "cross_task") / "metrics.json")
    loaded = {o["dataset"]: _load(results_dir(p, "ablate", o["dataset"]) / "ablations.json") for o in outs}
    ablations = {ds: a for ds, a in loaded.items() if a}  # read once: the findings and the tables share them
    frontiers = {o["dataset"]: _load(results_dir(p, "curves", o["dataset"]) / "frontier.json") for o in outs}
    if outs:
        overview += render_findings(outs, ablations, cross, {k: v for k, v in frontiers.items() if v})
        overview += table1_block(outs)
        overview += pooled_tune_block(p, [o["dataset"] for o in outs])
    rel = _relative(page_dir)
    for out in outs:
        ds = out["dataset"]
        parts += [f"### {ds}", "", render_table(out), ""]
        parts += chosen_block(out)
        share = out["methods"]["der"]["first_expert_share"]
        picks = ", ".join(f"{e} {s:.0%}" for e, s in zip(out["experts"], share))
        parts += [f"DER's first expert on the test split (mean over seeds): {picks}.", ""]
        parts += [f"Paired bootstrap over the {out['test_queries']} test queries ({p.evaluate.bootstrap} resamples):",
                  "", render_comparisons(out), ""]
        parts += proposal_block(ds)
        parts += signals_block(out) + training_block(p, out, rel)
        tuned = _load(results_dir(p, "tune", ds) / "tune.json")
        if tuned and "skipped" not in tuned:
            from der_pipeline.evaluate.tune import current_settings, render_tune

            agrees = tuned["best"] == current_settings(p)
            parts += [f"#### {ds}: choosing the settings by cross-validation on the train split", "",
                      "params.yaml's DER settings are " + ("the best row of this table." if agrees else
                      f"not this dataset's best row (the best is {tuned['best']}); one setting serves every "
                      "dataset, the best row of the mean over datasets (above)."), "",
                      render_tune(tuned, current_settings(p)), ""]
        frontier = frontiers.get(ds)
        if frontier:
            png = results_dir(p, "curves", ds) / "cost_accuracy.png"
            parts += [f"#### {ds}: quality against cost", "", f"![quality against cost, {ds}]({rel(png)})", "",
                      render_frontier(frontier), ""]
        if ds in ablations:
            parts += [f"#### {ds}: ablations", "", render_ablations(ablations[ds], p), ""]
        parts += tree_block(p, ds)
    if cross and "skipped" not in cross:
        parts += ["### One router across tasks", "", render_cross_task(cross), ""]
    # the page's sections: the overview's (level 4 where they are rendered) and each dataset's (level 3) at 2
    return "\n".join([_shift_headings("\n".join(overview), 2), _shift_headings("\n".join(parts), 1)]).strip("\n")


PAGE_INTRO = [
    "<!-- Written by `der-pipeline report` from the files under results/; do not edit by hand. -->",
    "",
    "# Results",
    "",
    "Every number on this page is read from the files under `results/` by `der-pipeline report`, which writes "
    "this page and the README's headline block; `dvc repro` rebuilds those files from the committed trees "
    "without calling an LLM, and `der-pipeline report --check` fails while either file is stale. How the "
    "methods are judged, and how to read these tables: [How results are judged](router.md#how-results-are-judged).",
    "",
]


def _shift_headings(text: str, levels: int) -> str:
    """Every heading ``levels`` levels up (never above level 2), code fences left alone: the page's title is
    its only level-1 heading."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"(#{2,6}) ", line)
        if heading:
            line = "#" * max(2, len(heading.group(1)) - levels) + line[len(heading.group(1)):]
        out.append(line)
    return "\n".join(out)


def results_page(p: Params, page_dir: Path) -> str:
    """The whole results page: its fixed introduction, the headline, then ``results_section``."""
    head = [*PAGE_INTRO, "## Headline", "", *headline_lines(p, page_dir), ""]
    body = results_section(p, page_dir)
    return "\n".join(head) + ("\n" + body if body else "") + "\n"


def results_markers_problem(text: str) -> str | None:
    """What is wrong with the results markers of a README's ``text`` (None: one start marker, then one end)."""
    missing = [f"the {name} marker {marker!r}" for name, marker in (("start", START), ("end", END))
               if marker not in text]
    if missing:
        return " and ".join(missing) + (" is" if len(missing) == 1 else " are") + " missing"
    if text.count(START) > 1 or text.count(END) > 1:
        return f"the markers appear more than once ({text.count(START)} start, {text.count(END)} end); keep one pair"
    if text.index(END) < text.index(START):
        return "the end marker comes before the start marker"
    return None


def update_readme(p: Params, readme: Path, write: bool = True) -> bool:
    """Rewrite the README's headline block (between the markers) and the results page beside it
    (``RESULTS_PAGE``, under the README's folder); returns whether either changed. With ``write=False``
    nothing is written (`report --check`). A README without its two markers (or with them out of order) is a
    ValueError naming the file and the marker, before anything is computed or written."""
    readme = Path(readme)
    try:
        text = readme.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{readme}: no such file (the README whose results section `report` writes; "
                                f"pick it with --readme)") from None
    problem = results_markers_problem(text)
    if problem:
        raise ValueError(f"{readme}: cannot place the results section: {problem}. It goes between these two lines, "
                         f"each on its own: {START} and {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + headline_block(p, readme.parent) + tail
    page = readme.parent / RESULTS_PAGE
    new_page = results_page(p, page.parent)
    old_page = page.read_text() if page.exists() else None
    changed = new != text or new_page != old_page
    if write:
        if new != text:
            readme.write_text(new)
        if new_page != old_page:
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(new_page)
    return changed
