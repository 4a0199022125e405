"""The `prepare` stage: raw benchmark records -> one canonical Parquet table per dataset.

Sampling and splitting are keyed on each query's id and the seed alone, so a
query keeps its split when the sample grows, and a larger sample contains the
smaller one (generation already done for it is reused).
"""
from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path


from der_pipeline.artifacts import prepared_path
from der_pipeline.config import Params
from der_pipeline.data.sources import read_records
from der_pipeline.io import write_rows
from der_pipeline.schemas import PREPARED

_SENT_END = re.compile(r"(?<=[.!?])\s+")


def unit_hash(*parts: object) -> float:
    """A stable number in [0, 1) from the parts (sha256; no Python hash randomisation)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(qid: str, seed: int, test_fraction: float) -> str:
    return "test" if unit_hash("split", seed, qid) < test_fraction else "train"


def trim_sentences(text: str, max_chars: int) -> str:
    """Keep whole sentences from the start while the text stays under ``max_chars``."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    out: list[str] = []
    size = 0
    for sent in _SENT_END.split(text):
        if size + len(sent) + 1 > max_chars and out:
            break
        out.append(sent)
        size += len(sent) + 1
    return " ".join(out)[:max_chars]


def _question(q: str) -> str:
    q = " ".join(q.split())
    q = q[0].upper() + q[1:] if q else q
    return q if q.endswith("?") else q + "?"


def boolq_row(rec: dict, p: Params) -> dict:
    passage = trim_sentences(rec["passage"], p.data.max_context_chars)
    context = f"{rec['title']}: {passage}" if rec["title"].strip() else passage
    return dict(qid=f"boolq-{rec['idx']}", question=_question(rec["question"]), context=context,
                reference="yes" if rec["answer"] else "no", answer_type="yes_no", aliases=[])


def hotpot_context(rec: dict, seed: int, distractors: int, max_chars: int) -> str:
    """Both gold paragraphs plus ``distractors`` others, shuffled with the seed, trimmed to ``max_chars``.

    The last non-supporting sentence of the longest paragraph goes first; supporting sentences always stay.
    """
    support: dict[str, set[int]] = {}
    for title, idx in rec["supporting_facts"]:
        support.setdefault(title, set()).add(idx)
    paras = {title: list(sents) for title, sents in rec["context"]}
    gold = [t for t in paras if t in support]
    others = [t for t in paras if t not in support]
    rng = random.Random(f"{seed}:{rec['_id']}")
    chosen = gold + rng.sample(others, min(distractors, len(others)))
    rng.shuffle(chosen)
    keep = {t: [(i, s.strip()) for i, s in enumerate(paras[t]) if s.strip()] for t in chosen}

    def render() -> str:
        return "\n".join(f"{t}: {' '.join(s for _, s in keep[t])}" for t in chosen)

    def droppable(t: str) -> list[int]:
        return [k for k, (i, _) in enumerate(keep[t]) if i not in support.get(t, set())]

    while len(render()) > max_chars:
        candidates = [t for t in chosen if droppable(t)]
        if not candidates:  # only supporting sentences are left: keep them, over budget
            break
        longest = max(candidates, key=lambda t: sum(len(s) for _, s in keep[t]))
        keep[longest].pop(droppable(longest)[-1])
    return render()


def hotpot_row(rec: dict, p: Params) -> dict:
    ctx = hotpot_context(rec, p.data.seed, p.data.hotpot_distractors, p.data.max_context_chars)
    return dict(qid=f"hotpotqa-{rec['_id']}", question=_question(rec["question"]), context=ctx,
                reference=rec["answer"].strip(), answer_type="span", aliases=[])


def gsm8k_row(rec: dict, p: Params, lineno: int) -> dict:
    final = rec["answer"].split("####")[-1].strip().replace(",", "")
    return dict(qid=f"gsm8k-test-{lineno}", question=" ".join(rec["question"].split()), context="",
                reference=final, answer_type="number", aliases=[])


def xsum_row(rec: dict, p: Params) -> dict:
    return dict(qid=f"xsum-{rec['id']}", question="Summarise the article in one sentence.",
                context=trim_sentences(rec["document"], p.data.max_context_chars),
                reference=" ".join(rec["summary"].split()), answer_type="summary", aliases=[])


def canonical_rows(dataset: str, p: Params) -> list[dict]:
    rows = []
    for lineno, rec in read_records(p.path("source_data"), dataset):
        if dataset == "boolq":
            row = boolq_row(rec, p)
        elif dataset == "hotpotqa":
            row = hotpot_row(rec, p)
        elif dataset == "gsm8k":
            row = gsm8k_row(rec, p, lineno)
        else:
            row = xsum_row(rec, p)
        row["dataset"] = dataset
        rows.append(row)
    return rows


def prepare_dataset(dataset: str, p: Params) -> Path:
    rows = canonical_rows(dataset, p)
    seen: set[str] = set()
    for r in rows:
        if r["qid"] in seen:
            raise ValueError(f"{dataset}: duplicate query id {r['qid']} in the raw file")
        seen.add(r["qid"])
    n = p.data.datasets[dataset].sample
    rows.sort(key=lambda r: unit_hash("sample", p.data.seed, r["qid"]))
    rows = rows[:n]
    for r in rows:
        r["split"] = split_of(r["qid"], p.data.seed, p.data.test_fraction)
    return write_rows(rows, prepared_path(p, dataset), PREPARED)


def prepare(p: Params) -> dict[str, Path]:
    out = {}
    folder = p.path("data") / "prepared"
    for name in p.data.active():
        out[name] = prepare_dataset(name, p)
    # a dataset switched off leaves no stale table behind
    if folder.exists():
        for stale in folder.glob("*.parquet"):
            if stale.stem not in out:
                stale.unlink()
    return out
