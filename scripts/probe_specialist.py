"""Probe a candidate specialist before generating tree nodes for it: train it (LoRA, into a scratch folder),
then its hop-1 answers to a dataset's train-split queries: how often they are right, how well its
confidence separates right from wrong (AUROC), and the confidence cascade it would make with the
committed tree's strongest expert outside its slot, beside the committed pool's own experts.

A specialist changes 8 of every query's 20 nodes, hours of generation on 2 cores; this answers first
whether it is worth them. Most of its time is training, one step per `batch_size` examples (checkpointed
in the model cache every 5 minutes: a killed probe resumes there). For smollm2-135m with batches of 16: 4,096 examples
(256 steps) took 66 min with 1 thread; 8,192 (512 steps) ran at 17 s a step with 2 threads, alone (its
first 10 steps, 2026-11-29), about 2.4 h in all; 16,384 (1,024 steps) about 4 h. Only the train split
is read: the test split chooses nothing.

    python scripts/probe_specialist.py --dataset sst2 --expert qwen2.5-coder-0.5b
    python scripts/probe_specialist.py --dataset sst2 --expert smollm2-135m --train-examples 4096

The recipe is params.yaml's `specialists.<dataset>` (or, for a dataset without one, SST-2's) with
`--expert` and `--train-examples` replaced; `generation.n_threads` threads train it. A trained recipe is
kept in the model cache, so a second probe of the same recipe only converts and answers. The candidate
answers with `generation.backend` (llama.cpp: the adapter applied to the packaged GGUF).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import yaml

from der_pipeline.artifacts import dataset_params, load_prepared
from der_pipeline.config import load_params, params_from_dict
from der_pipeline.evaluate.stats import auroc
from der_pipeline.experts.backends import make_backend
from der_pipeline.experts.cost import call_cost
from der_pipeline.experts.keys import render_prompt
from der_pipeline.router.arrays import (
    CONF_FEATURES,
    build_arrays,
    conf_features,
    split_arrays,
)
from der_pipeline.signals.metrics import SPAN_RULE, score_answer
from der_pipeline.specialists.finetune import finetune


def candidate_params(p_path: Path, dataset: str, expert: str, train_examples: int | None, scratch: Path):
    """params.yaml with the candidate as the dataset's specialist, its adapter written under ``scratch``."""
    raw = yaml.safe_load(p_path.read_text())
    root = p_path.resolve().parent
    raw["paths"]["data"] = str(scratch)
    raw["paths"]["source_data"] = str((root / raw["paths"]["source_data"]).resolve())
    recipe = dict(raw["specialists"].get(dataset) or raw["specialists"]["sst2"])
    recipe["expert"] = expert
    if train_examples:
        recipe["train_examples"] = train_examples
    raw["specialists"] = {dataset: recipe}
    return params_from_dict(raw, root=root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="the committed tree's params")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--expert", required=True, help="the pool's expert to fine-tune")
    ap.add_argument("--train-examples", type=int, help="override the recipe's train_examples")
    ap.add_argument("--queries", type=int, default=0, help="only the first N train queries (0: all)")
    ap.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "der-specialist-probe",
                    help="where the candidate's adapter is written (never the repository's data/)")
    args = ap.parse_args()

    p = load_params(args.params)
    arrays, splits = build_arrays(p, args.dataset)
    train, _ = split_arrays(arrays, splits)
    if args.queries:
        train = train.subset(list(range(min(args.queries, train.n_queries))))
    by_qid = {r["qid"]: r for r in load_prepared(p, args.dataset).to_pylist()}
    rows = [by_qid[q] for q in train.qids]

    raw_cp = candidate_params(Path(args.params), args.dataset, args.expert, args.train_examples, args.scratch)
    log = finetune(raw_cp, args.dataset)
    print(f"candidate: {args.expert} + LoRA on {log['examples']} examples ({log['steps']} steps, final loss "
          f"{log['loss'][-1]:.3f}{', kept from an earlier probe' if log.get('kept') else ''})")
    cp = dataset_params(raw_cp, args.dataset)
    cand = next(e for e in cp.experts if e.adapter)
    backend = make_backend(cp.generation)
    outs = list(backend.generate(cand, [render_prompt(cp, cand, r) for r in rows]))
    backend.close()
    right = np.array([score_answer(o.text, r["reference"], r["answer_type"], r["aliases"],
                                   SPAN_RULE.get(args.dataset, "squad")).score for o, r in zip(outs, rows)])
    cost = np.array([call_cost(cand, o.prompt_tokens, o.completion_tokens) for o in outs])
    conf = np.array([conf_features(None if o.confidence is None else o.confidence.row()) for o in outs])

    # The cascade's partner is the strongest expert outside the candidate's slot: the slot's current
    # occupant (the base model, or an earlier specialist of it) is what the candidate would replace.
    slot = [e.name for e in cp.experts].index(cand.name)
    means = train.task1.mean(axis=0)
    strong = max((i for i in range(train.n_experts) if i != slot), key=lambda i: means[i])
    s_score, s_cost = train.task1[:, strong], train.cost1[:, strong]
    print(f"{args.dataset}: {train.n_queries} train queries")
    for i, name in enumerate(train.experts):
        print(f"  {name:34s} score {train.task1[:, i].mean():.3f}  cost {train.cost1[:, i].mean():7.1f} GFLOPs")
    print(f"  {cand.name + ' (candidate)':34s} score {right.mean():.3f}  cost {cost.mean():7.1f} GFLOPs")
    labels = right >= 0.5
    print("  candidate confidence AUROC: " + ", ".join(
        f"{f} {a:.2f}" for f, a in ((f, auroc(conf[:, k], labels)) for k, f in enumerate(CONF_FEATURES))
        if a is not None))
    print(f"cascade: {cand.name} first, {train.experts[strong]} afresh below the threshold (min_prob)")
    signal = conf[:, CONF_FEATURES.index("min_prob")]
    for share in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
        tau = np.quantile(signal, share) if share else -np.inf
        esc = signal < tau
        score = np.where(esc, s_score, right).mean()
        c = (cost + esc * s_cost).mean()
        print(f"  escalate {esc.mean():4.0%}: score {score:.3f} (strong {s_score.mean():.3f}) at "
              f"{c / s_cost.mean():.2f} of its cost")


if __name__ == "__main__":
    main()
