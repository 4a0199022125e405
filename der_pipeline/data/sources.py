"""Readers for the raw benchmark files in ``../shared/data`` (one JSON object per line).

Each reader validates every record and raises ``SourceError`` naming the file,
the line and the field of the first malformed one.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any


class SourceError(ValueError):
    """A raw data file is missing or malformed."""


@dataclass(frozen=True)
class SourceFile:
    dataset: str
    relpath: str
    required: dict[str, type | tuple[type, ...]]


SOURCES: dict[str, SourceFile] = {
    "boolq": SourceFile("boolq", "boolq/dev.jsonl",
                        {"idx": int, "question": str, "title": str, "passage": str, "answer": bool}),
    "hotpotqa": SourceFile("hotpotqa", "hotpotqa/dev_distractor.jsonl",
                           {"_id": str, "question": str, "answer": str, "supporting_facts": list, "context": list}),
    "gsm8k": SourceFile("gsm8k", "gsm8k/test.jsonl", {"question": str, "answer": str}),
    "xsum": SourceFile("xsum", "xsum/test.jsonl", {"id": (str, int), "document": str, "summary": str}),
    "sst2": SourceFile("sst2", "sst2/dev.jsonl", {"idx": int, "sentence": str, "label": int}),
    "squad": SourceFile("squad", "squad/dev.jsonl",
                        {"id": str, "title": str, "context": str, "question": str, "answers": list,
                         "answer_starts": list}),
}

# Training files, disjoint from the files above: what a specialist (params.yaml ``specialists``) learns from.
TRAIN_SOURCES: dict[str, SourceFile] = {
    "sst2": SourceFile("sst2", "sst2/train.jsonl", {"idx": int, "sentence": str, "label": int}),
}


# The answer type each dataset's prepared queries carry (prompts and metrics follow it).
ANSWER_TYPE = {"boolq": "yes_no", "hotpotqa": "span", "gsm8k": "number", "xsum": "summary", "sst2": "sentiment",
               "squad": "span"}


def json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON-lines file; a line that is not a JSON object
    (or not UTF-8 text: a binary file) raises SourceError naming the file and the line."""
    if path.is_dir():
        raise SourceError(f"{path}: is a folder, not a JSON-lines file")
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SourceError(f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line); "
                                  f"is it a binary file? A dataset is a JSON-lines text file") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise SourceError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def answer_type_of(p, dataset: str) -> str:
    """The answer type of a built-in benchmark, or the one params.yaml declares for a custom dataset."""
    if dataset in ANSWER_TYPE:
        return ANSWER_TYPE[dataset]
    spec = p.data.datasets.get(dataset)
    if spec is None or spec.answer_type is None:
        raise ValueError(f"dataset {dataset!r} is neither built in ({sorted(ANSWER_TYPE)}) nor declared under "
                         f"data.datasets in params.yaml")
    return spec.answer_type


# What a custom dataset's reference must look like, per answer type (checked on read).
CUSTOM_REFERENCE = {"yes_no": ("yes", "no"), "sentiment": ("positive", "negative")}


def read_custom(path: Path, answer_type: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) of a custom JSON-lines dataset: ``question`` and ``reference`` (non-empty
    strings), optional ``context`` (string), ``aliases`` (list of strings) and ``id`` (string or integer, unique;
    the line number otherwise). A yes/no or sentiment reference must be one of its labels; a number reference is a
    JSON number (12, 1.5) or a string of one ("1,234"), finite (not nan or inf)."""
    if not path.exists():
        raise SourceError(f"custom dataset file not found: {path.resolve()} (data.datasets.<name>.source, "
                          f"relative to params.yaml)")
    if not path.is_file():
        raise SourceError(f"custom dataset source {path.resolve()} is not a file (a folder?); "
                          f"data.datasets.<name>.source names a JSON-lines file, relative to params.yaml")
    allowed = {"id", "question", "context", "reference", "aliases"}
    ids: dict[str, int] = {}
    for lineno, rec in json_objects(path):
        extra = sorted(set(rec) - allowed)
        if extra:
            raise SourceError(f"{path}:{lineno}: unknown field '{extra[0]}'; allowed: {sorted(allowed)}")
        if answer_type == "number" and _is_json_number(rec.get("reference")):
            if not math.isfinite(rec["reference"]):
                raise SourceError(f"{path}:{lineno}: field 'reference' is {rec['reference']!r}, not a finite number")
        for name in ("question", "reference"):
            if name == "reference" and answer_type == "number" and _is_json_number(rec.get(name)):
                continue
            if not isinstance(rec.get(name), str) or not rec[name].strip():
                raise SourceError(f"{path}:{lineno}: field '{name}' must be a non-empty string"
                                  + (" or a number" if name == "reference" and answer_type == "number" else ""))
        if not isinstance(rec.get("context", ""), str):
            raise SourceError(f"{path}:{lineno}: field 'context' must be a string")
        aliases = rec.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
            raise SourceError(f"{path}:{lineno}: field 'aliases' must be a list of non-empty strings")
        ref = str(rec["reference"]).strip().lower()
        if answer_type in CUSTOM_REFERENCE and ref not in CUSTOM_REFERENCE[answer_type]:
            raise SourceError(f"{path}:{lineno}: field 'reference' is {rec['reference']!r}; a {answer_type} "
                              f"answer is one of {list(CUSTOM_REFERENCE[answer_type])}")
        if answer_type == "number" and isinstance(rec["reference"], str):
            try:
                value = Decimal(rec["reference"].replace(",", "").strip())
            except InvalidOperation:
                raise SourceError(f"{path}:{lineno}: field 'reference' is {rec['reference']!r}, not a number") from None
            if not value.is_finite():
                raise SourceError(f"{path}:{lineno}: field 'reference' is {rec['reference']!r}, not a finite number")
        rid = rec.get("id", lineno)
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
            raise SourceError(f"{path}:{lineno}: field 'id' must be a non-empty string or an integer")
        if str(rid) in ids:
            raise SourceError(f"{path}:{lineno}: id {rid!r} already used on line {ids[str(rid)]}")
        ids[str(rid)] = lineno
        yield lineno, rec


def _is_json_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def source_path(source_dir: Path, dataset: str, train: bool = False) -> Path:
    table = TRAIN_SOURCES if train else SOURCES
    if dataset not in table:
        raise SourceError(f"unknown dataset {dataset!r}; known{' with a training file' if train else ''}: "
                          f"{sorted(table)}")
    path = Path(source_dir) / table[dataset].relpath
    if not path.exists():
        raise SourceError(
            f"{dataset}: raw file not found at {path.resolve()}. The benchmark files live in the shared "
            f"data folder beside the repository (see its README.md); set paths.source_data in params.yaml "
            f"to the folder that holds '{table[dataset].relpath}'."
        )
    return path


def read_records(source_dir: Path, dataset: str, train: bool = False,
                 relpath: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for every validated record of ``dataset`` (its training file if ``train``;
    ``relpath``: another file of the same fields under ``source_dir``, such as the dataset's own test file)."""
    spec = (TRAIN_SOURCES if train else SOURCES)[dataset]
    if relpath is None:
        path = source_path(source_dir, dataset, train)
    else:
        path = Path(source_dir) / relpath
        if not path.is_file():
            raise SourceError(f"{dataset}: test file not found at {path.resolve()} (data.datasets.{dataset}.test_file, "
                              f"relative to paths.source_data)")
    for lineno, rec in json_objects(path):
        for name, tp in spec.required.items():
            if name not in rec:
                raise SourceError(f"{path}:{lineno}: missing field '{name}'")
            if not isinstance(rec[name], tp) or (tp is int and isinstance(rec[name], bool)):
                raise SourceError(f"{path}:{lineno}: field '{name}' has type "
                                  f"{type(rec[name]).__name__}, expected {_tname(tp)}")
            if isinstance(rec[name], str) and not rec[name].strip() and name != "title":
                raise SourceError(f"{path}:{lineno}: field '{name}' is empty")
        if dataset == "hotpotqa":
            _check_hotpot(rec, path, lineno)
        if dataset == "gsm8k" and "####" not in rec["answer"]:
            raise SourceError(f"{path}:{lineno}: field 'answer' has no '#### <number>' final answer")
        if dataset == "sst2" and rec["label"] not in (0, 1):
            raise SourceError(f"{path}:{lineno}: field 'label' is {rec['label']}, "
                              "expected 0 (negative) or 1 (positive)")
        if dataset == "squad":
            _check_squad(rec, path, lineno)
        yield lineno, rec


def _check_hotpot(rec: dict, path: Path, lineno: int) -> None:
    for i, para in enumerate(rec["context"]):
        ok = (isinstance(para, list) and len(para) == 2 and isinstance(para[0], str)
              and isinstance(para[1], list) and all(isinstance(s, str) for s in para[1]))
        if not ok:
            raise SourceError(f"{path}:{lineno}: field 'context[{i}]' must be [title, [sentences]]")
    for i, fact in enumerate(rec["supporting_facts"]):
        if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str) and isinstance(fact[1], int)):
            raise SourceError(f"{path}:{lineno}: field 'supporting_facts[{i}]' must be [title, sentence index]")


def _check_squad(rec: dict, path: Path, lineno: int) -> None:
    answers, starts = rec["answers"], rec["answer_starts"]
    if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise SourceError(f"{path}:{lineno}: field 'answers' must be a non-empty list of non-empty strings")
    if len(starts) != len(answers) or not all(isinstance(s, int) and not isinstance(s, bool) for s in starts):
        raise SourceError(f"{path}:{lineno}: field 'answer_starts' must hold one integer offset per answer")
    for a, s in zip(answers, starts):
        if rec["context"][s:s + len(a)] != a:
            raise SourceError(f"{path}:{lineno}: answer {a!r} is not at offset {s} of 'context'")


def _tname(tp: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in tp) if isinstance(tp, tuple) else tp.__name__
