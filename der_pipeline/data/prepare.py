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
from der_pipeline.data.sources import SOURCES, SourceError, read_custom, read_records
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


def sst2_row(rec: dict, p: Params) -> dict:
    """GLUE's tokenised sentence as it is (the form every SST-2 result is reported on); label 1 is positive."""
    return dict(qid=f"sst2-{rec['idx']}", question="Is the sentiment of this movie review positive or negative?",
                context=" ".join(rec["sentence"].split()), reference="positive" if rec["label"] == 1 else "negative",
                answer_type="sentiment", aliases=[])


def trim_around(text: str, start: int, end: int, max_chars: int) -> str:
    """Whole sentences under ``max_chars`` that always include the characters [start, end) (the gold answer):
    the sentences holding it, then neighbours after and before it in turn while they fit."""
    if len(" ".join(text.split())) <= max_chars:
        return " ".join(text.split())
    spans, pos = [], 0
    for m in _SENT_END.finditer(text):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, len(text)))
    first = next(i for i, (a, b) in enumerate(spans) if b > start or i == len(spans) - 1)
    last = next(i for i, (a, b) in enumerate(spans) if b >= end or i == len(spans) - 1)
    lo, hi = first, last

    def size(a: int, b: int) -> int:
        return sum(len(" ".join(text[x:y].split())) + 1 for x, y in spans[a:b + 1])

    grew = True
    while grew:
        grew = False
        if hi + 1 < len(spans) and size(lo, hi + 1) <= max_chars:
            hi, grew = hi + 1, True
        if lo > 0 and size(lo - 1, hi) <= max_chars:
            lo, grew = lo - 1, True
    return " ".join(" ".join(text[a:b].split()) for a, b in spans[lo:hi + 1])


def squad_row(rec: dict, p: Params) -> dict:
    """The title and the paragraph, trimmed around the first gold answer; every distinct gold answer is kept
    (the official SQuAD metric takes the best over them)."""
    title = rec["title"].replace("_", " ")
    budget = p.data.max_context_chars - len(title) - 2
    first, start = rec["answers"][0], rec["answer_starts"][0]
    para = trim_around(rec["context"], start, start + len(first), budget)
    golds = list(dict.fromkeys(a.strip() for a in rec["answers"]))
    return dict(qid=f"squad-{rec['id']}", question=_question(rec["question"]), context=f"{title}: {para}",
                reference=golds[0], answer_type="span", aliases=golds[1:])


ROWS = {"boolq": lambda rec, p, n: boolq_row(rec, p), "hotpotqa": lambda rec, p, n: hotpot_row(rec, p),
        "gsm8k": gsm8k_row, "xsum": lambda rec, p, n: xsum_row(rec, p), "sst2": lambda rec, p, n: sst2_row(rec, p),
        "squad": lambda rec, p, n: squad_row(rec, p)}


def number_text(value: int | float) -> str:
    """A JSON number as a reference string: 12 -> '12', 12.0 -> '12', 1.5 -> '1.5' (the table holds strings)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if isinstance(value, int) else repr(value)


def custom_row(rec: dict, p: Params, lineno: int, dataset: str, answer_type: str) -> dict:
    ref = rec["reference"]
    ref = (ref if isinstance(ref, str) else number_text(ref)).strip()  # a number answer's reference may be a number
    if answer_type in ("yes_no", "sentiment"):
        ref = ref.lower()
    question = _question(rec["question"]) if answer_type in ("yes_no", "span") else " ".join(rec["question"].split())
    return dict(qid=f"{dataset}-{rec.get('id', lineno)}", question=question,
                context=trim_sentences(rec.get("context", ""), p.data.max_context_chars), reference=ref,
                answer_type=answer_type, aliases=[a.strip() for a in rec.get("aliases", [])])


def canonical_rows(dataset: str, p: Params, test_file: bool = False) -> list[dict]:
    """The dataset's records as prepared rows (those of its own test file if ``test_file``: their ids get a
    ``test-`` prefix, so they never collide with the main file's)."""
    spec = p.data.datasets[dataset]
    rows = []
    if dataset in ROWS:
        relpath = spec.test_file if test_file else None
        records = ((lineno, ROWS[dataset](rec, p, lineno))
                   for lineno, rec in read_records(p.path("source_data"), dataset, relpath=relpath))
    else:
        rel = spec.test_file if test_file else spec.source
        path = Path(rel) if Path(rel).is_absolute() else p.root / rel
        records = ((lineno, custom_row(rec, p, lineno, dataset, spec.answer_type))
                   for lineno, rec in read_custom(path, spec.answer_type))
    for _, row in records:
        if test_file:
            row["qid"] = row["qid"].replace(f"{dataset}-", f"{dataset}-test-", 1)
        row["dataset"] = dataset
        rows.append(row)
    return rows


def source_file(dataset: str, p: Params, test_file: bool = False) -> Path:
    """The file ``canonical_rows`` reads (for messages)."""
    spec = p.data.datasets[dataset]
    if dataset in ROWS:
        return p.path("source_data") / (spec.test_file if test_file else SOURCES[dataset].relpath)
    rel = spec.test_file if test_file else spec.source
    return Path(rel) if Path(rel).is_absolute() else p.root / rel


def _sampled(dataset: str, p: Params, rows: list[dict], n: int, what: str, test_file: bool = False) -> list[dict]:
    """The first ``n`` rows in the seeded sample order. An empty file, or fewer records than ``n``, is an error
    (raised before anything is written, so the prepared table already there stays as it is)."""
    key = f"data.datasets.{dataset}.{'test_sample' if test_file else 'sample'}"
    if not rows:
        raise SourceError(f"{dataset}: the {what} {source_file(dataset, p, test_file)} holds no records; nothing "
                          f"was written (add records to it, or set {key} to 0 to leave {dataset} out)")
    if n > len(rows):
        raise SourceError(f"{dataset}: {key} is {n} but the {what} {source_file(dataset, p, test_file)} holds only "
                          f"{len(rows)} records; set it to {len(rows)} or less (nothing was written)")
    seen: set[str] = set()
    for r in rows:
        if r["qid"] in seen:
            raise ValueError(f"{dataset}: duplicate query id {r['qid']} in the raw {what}")
        seen.add(r["qid"])
    rows.sort(key=lambda r: unit_hash("sample", p.data.seed, r["qid"]))
    return rows[:n]


def prepared_rows(dataset: str, p: Params) -> list[dict]:
    """The dataset's prepared rows (sampled, split), read and checked; nothing is written."""
    spec = p.data.datasets[dataset]
    rows = _sampled(dataset, p, canonical_rows(dataset, p), spec.sample, "file")
    if spec.test_file is None:
        for r in rows:
            r["split"] = split_of(r["qid"], p.data.seed, p.data.test_fraction)
    else:  # a test file of its own: the main file is all train
        for r in rows:
            r["split"] = "train"
        test = _sampled(dataset, p, canonical_rows(dataset, p, test_file=True), spec.test_sample, "test file",
                        test_file=True)
        for r in test:
            r["split"] = "test"
        rows += test
    return rows


def prepare_dataset(dataset: str, p: Params) -> Path:
    return write_rows(prepared_rows(dataset, p), prepared_path(p, dataset), PREPARED)


def prepare(p: Params, datasets: list[str] | None = None) -> dict[str, Path]:
    """Every active dataset (or only ``datasets``); a full run also removes the tables of datasets switched off."""
    out = {}
    folder = p.path("data") / "prepared"
    # every dataset is read and checked before any table is written: a bad one leaves all tables as they were
    tables = {name: prepared_rows(name, p) for name in datasets or p.data.active()}
    for name, rows in tables.items():
        out[name] = write_rows(rows, prepared_path(p, name), PREPARED)
    # a dataset switched off leaves no stale table behind
    if datasets is None and folder.exists():
        for stale in folder.glob("*.parquet"):
            if stale.stem not in out:
                stale.unlink()
    return out
