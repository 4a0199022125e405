"""Readers for the raw benchmark files in ``../shared/data`` (one JSON object per line).

Each reader validates every record and raises ``SourceError`` naming the file,
the line and the field of the first malformed one.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
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
}


# The answer type each dataset's prepared queries carry (prompts and metrics follow it).
ANSWER_TYPE = {"boolq": "yes_no", "hotpotqa": "span", "gsm8k": "number", "xsum": "summary"}


def source_path(source_dir: Path, dataset: str) -> Path:
    if dataset not in SOURCES:
        raise SourceError(f"unknown dataset {dataset!r}; known: {sorted(SOURCES)}")
    path = Path(source_dir) / SOURCES[dataset].relpath
    if not path.exists():
        raise SourceError(
            f"{dataset}: raw file not found at {path.resolve()}. The benchmark files live in the shared "
            f"data folder beside the repository (see its README.md); set paths.source_data in params.yaml "
            f"to the folder that holds '{SOURCES[dataset].relpath}'."
        )
    return path


def read_records(source_dir: Path, dataset: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for every validated record of ``dataset``."""
    spec = SOURCES[dataset]
    path = source_path(source_dir, dataset)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise SourceError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
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


def _tname(tp: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in tp) if isinstance(tp, tuple) else tp.__name__
