"""The `score` stage: quality P(.) of every node of the tree.

Two signals per node: the task's own metric (see metrics.py) and BERTScore F1
against the reference. BERTScore here uses the packaged all-MiniLM-L6-v2
(6 layers), not bert-score's default roberta-large: the numbers are not
comparable with papers' BERTScore, only among our own nodes.
"""
from __future__ import annotations

import logging
import os
import time

import pyarrow as pa

from der_pipeline.artifacts import dataset_params, scores_path
from der_pipeline.config import Params
from der_pipeline.experts.models import embedder_path
from der_pipeline.generate.tree import load_tree
from der_pipeline.io import write_table
from der_pipeline.schemas import SCORES, SECONDARY_METRICS
from der_pipeline.signals.metrics import SPAN_RULE, score_answer

log = logging.getLogger(__name__)


BERTSCORE_DECIMALS = 4


def bertscore_f1(candidates: list[str], references: list[str], p: Params) -> list[float]:
    """BERTScore F1 of each candidate against its reference, rounded to BERTSCORE_DECIMALS.

    Why rounded: the float sums inside BERTScore differ in the last bits between CPUs, so an exact match
    comes out as 0.9999999 on one machine and 1.0000001 on another. Unrounded, a rank statistic over many
    tied values (the Spearman rho of BERTScore with the task score on yes/no answers) ranks that noise and
    moves between machines for the same tree. Four decimals keep every real difference.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import bert_score
    import transformers

    transformers.logging.set_verbosity_error()
    cands = [c if c.strip() else "(no answer)" for c in candidates]
    _, _, f1 = bert_score.score(cands, references, model_type=str(embedder_path(p.signals.embedder)),
                                num_layers=p.signals.bertscore_num_layers,
                                batch_size=p.signals.bertscore_batch_size, device="cpu", verbose=False)
    return [round(float(x), BERTSCORE_DECIMALS) for x in f1.tolist()]


def score(p: Params, dataset: str) -> dict:
    p = dataset_params(p, dataset)
    t0 = time.perf_counter()
    prepared, tree = load_tree(p, dataset)
    by_qid = {r["qid"]: r for r in prepared.to_pylist()}
    rows = []
    for qid, path, answer in zip(tree["qid"].to_pylist(), tree["path"].to_pylist(), tree["answer"].to_pylist()):
        q = by_qid[qid]
        s = score_answer(answer, q["reference"], q["answer_type"], q["aliases"], SPAN_RULE.get(dataset, "squad"))
        rows.append(dict(qid=qid, path=path, parsed_answer=s.parsed, task_metric=s.metric, task_score=s.score,
                         **{name: s.secondary.get(name) for name in SECONDARY_METRICS}))
    refs = [by_qid[r["qid"]]["reference"] for r in rows]
    # BERTScore compares the parsed answer, as the task metric does, so both judge the same text
    f1 = bertscore_f1([r["parsed_answer"] for r in rows], refs, p)
    for r, f in zip(rows, f1):
        r["bertscore_f1"] = f
    write_table(pa.Table.from_pylist(rows, schema=SCORES), scores_path(p, dataset), SCORES)
    secs = time.perf_counter() - t0
    mean_task = sum(r["task_score"] for r in rows) / len(rows)
    return {"dataset": dataset, "rows": len(rows), "mean_task_score": round(mean_task, 4),
            "mean_bertscore_f1": round(sum(f1) / len(f1), 4), "seconds": round(secs, 2),
            "rows_per_s": round(len(rows) / max(secs, 1e-9), 1)}
