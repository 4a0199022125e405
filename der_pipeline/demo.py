"""`der-pipeline demo`: the committed results at once, or (``--rerun``) three labelled steps: the chain on a small
BoolQ sample with the real experts, the routers judged on the committed full trees, one question routed live."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from der_pipeline.config import Params

log = logging.getLogger(__name__)


def demo_params(p: Params, sample: int, workdir: Path) -> Params:
    workdir = workdir.resolve()
    new = p.override("paths", source_data=str(p.path("source_data").resolve()), data=str(workdir / "data"),
                     models=str(workdir / "models"), results=str(workdir / "results"),
                     metrics=str(workdir / "metrics"))
    new = new.override("data", test_fraction=0.5,
                       datasets={k: {"sample": sample if k == "boolq" else 0} for k in p.data.datasets})
    new = new.override("ppo", total_timesteps=20_480)
    new = new.override("evaluate", alpha_sweep=[0.0, 0.1, 0.4], bootstrap=200)
    return new.override("seeds", seeds=p.seeds[:1])


DEMO_QUESTION = ("Is the Pacific the largest ocean on Earth?",
                 "The Pacific Ocean is the largest and deepest of Earth's five oceanic divisions. It extends from the "
                 "Arctic Ocean in the north to the Southern Ocean in the south.")


def run_demo(p: Params, sample: int, workdir: Path, echo: Callable[[str], None] = print,
             steps: tuple[int, ...] = (1, 2, 3)) -> str | None:
    """Three labelled steps (docs/index.md): (1) the whole chain on ``sample`` BoolQ queries with the real
    experts, a check that every stage runs, with no verdict (a handful of queries cannot carry one); (2) the
    committed policies and every baseline fitted and judged on the committed full trees, no LLM, ending with the
    headline table; (3) one question routed live through the real experts. ``steps``: which to run. Returns the
    headline table (None without step 2)."""
    from der_pipeline.ask import ask
    from der_pipeline.evaluate.report import headline_lines
    from der_pipeline.evaluate.run import evaluate

    if sample < 2:
        raise ValueError("--sample must be at least 2 (the demo needs a train and a test query)")
    if not steps or set(steps) - {1, 2, 3}:
        raise ValueError(f"--steps {list(steps)}: the demo's steps are 1, 2 and 3")
    table = None
    if 1 in steps:
        _chain(p, sample, workdir, echo)
    if 2 in steps:
        echo("")
        echo("== step 2 of 3: the committed policies and every baseline, fitted and judged on the committed full "
             "trees (no LLM) ==")
        committed = p.override("paths", results=str((workdir / "committed" / "results").resolve()),
                               metrics=str((workdir / "committed" / "metrics").resolve()))  # tracked files untouched
        evaluate(committed, list(p.data.active()))
        table = "\n".join(headline_lines(committed, workdir.resolve()))
        echo(table)
    if 3 in steps:
        echo("")
        echo("== step 3 of 3: one question routed live through the real experts by the committed BoolQ policy ==")
        echo(f"question: {DEMO_QUESTION[0]}")
        ask(p, "boolq", DEMO_QUESTION[0], DEMO_QUESTION[1], echo=echo)
    return table


def _chain(p: Params, sample: int, workdir: Path, echo: Callable[[str], None]) -> None:
    from der_pipeline.data.prepare import prepare
    from der_pipeline.generate.run import generate
    from der_pipeline.router.train import train_dataset
    from der_pipeline.signals.confidence import confidence_dataset
    from der_pipeline.signals.embed import embed
    from der_pipeline.signals.score import score

    dp = demo_params(p, sample, workdir)
    echo(f"== step 1 of 3: the whole chain on {sample} BoolQ queries with the real experts (a check that every "
         f"stage runs; outputs in {workdir}) ==")
    prepared = prepare(dp)
    echo(f"prepare:    {sample} BoolQ queries -> {prepared['boolq']}")
    gen = generate(dp, ["boolq"])[0]
    echo(f"generate:   {gen['nodes_total']} tree nodes for {gen['queries']} queries "
         f"({gen['nodes_generated']} made now, every expert path up to 2 hops)")
    conf = confidence_dataset(dp, "boolq", progress=False)
    echo(f"confidence: {conf['nodes']} nodes with answer confidence features")
    emb = embed(dp, "boolq")
    echo(f"embed:      {emb['rows']} texts embedded ({emb['dim']} dimensions)")
    sc = score(dp, "boolq")
    echo(f"score:      {sc['rows']} answers scored against the references")
    tr = train_dataset(dp, "boolq")
    seed = tr["seeds"][0]
    echo(f"train:      a PPO policy on {tr['train_queries']} train queries, {seed['iterations']} iterations, "
         f"saved under {tr['out']} ({seed['policy']})")
    echo("(a few queries show that the chain runs, not whether DER pays: step 2 answers that)")


def committed_results(p: Params) -> str:
    """The committed result tables (results/evaluate/*/table.md and the cross-task table), as they are."""
    from der_pipeline.artifacts import results_dir

    tables = sorted(results_dir(p, "evaluate").glob("*/table.md"))
    cross = results_dir(p, "cross_task") / "table.md"
    if cross.exists():
        tables.append(cross)
    if not tables:
        raise FileNotFoundError(f"no committed results under {results_dir(p, 'evaluate')}: run `dvc repro`, "
                                "or `der-pipeline demo --rerun` for a small real run")
    return "\n\n".join(f"## {t.parent.name} (committed: {t.as_posix()})\n\n{t.read_text().strip()}" for t in tables)
