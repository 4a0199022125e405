"""`der-pipeline demo`: the committed results at once, or (``--rerun``) the whole chain on a small BoolQ sample
with the real experts, in its own folder."""
from __future__ import annotations

import logging
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


def run_demo(p: Params, sample: int, workdir: Path) -> str:
    from der_pipeline.data.prepare import prepare
    from der_pipeline.evaluate.run import evaluate
    from der_pipeline.generate.run import generate
    from der_pipeline.router.train import train_dataset
    from der_pipeline.signals.confidence import confidence_dataset
    from der_pipeline.signals.embed import embed
    from der_pipeline.signals.score import score

    if sample < 2:
        raise ValueError("--sample must be at least 2 (the demo needs a train and a test query)")
    dp = demo_params(p, sample, workdir)
    steps = [("prepare", lambda: prepare(dp)), ("generate", lambda: generate(dp)),
             ("confidence", lambda: confidence_dataset(dp, "boolq", progress=False)),
             ("embed", lambda: embed(dp, "boolq")), ("score", lambda: score(dp, "boolq")),
             ("train", lambda: train_dataset(dp, "boolq")), ("evaluate", lambda: evaluate(dp, ["boolq"]))]
    out = None
    for name, fn in steps:
        log.info("demo: %s", name)
        out = fn()
    return f"## boolq demo ({sample} queries, real experts; outputs in {workdir})\n\n{out['boolq']}"


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
