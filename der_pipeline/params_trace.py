"""Which params keys a stage really reads, so a test can hold dvc.yaml's `params:` lists to the code.

With DER_TRACE_PARAMS=<folder> set, a stage script records every leaf of params it reads (a dotted key such as
``evaluate.knn_k``; a list or mapping of settings, such as ``experts`` or ``data.datasets``, as a whole) and
writes them to <folder>/<stage>.json at exit. Reads made while params are built, copied or validated are not
counted: validation touches every key, a read there decides no output. Off by default: it costs nothing then.
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

_SKIP_FUNCTIONS = {"validate", "override", "with_preset", "_build", "dump_params", "params_from_dict", "_check"}


def _paths_by_type() -> dict[type, str]:
    from der_pipeline import config

    out: dict[type, str] = {}

    def walk(tp: type, prefix: str) -> None:
        out.setdefault(tp, prefix)
        for f in dataclasses.fields(tp):
            hint = typing.get_type_hints(tp)[f.name]
            for inner in (hint, *typing.get_args(hint)):
                if dataclasses.is_dataclass(inner) and inner not in out:
                    key = f"{prefix}.{f.name}" if prefix else f.name
                    # a list or mapping of dataclasses (experts, data.datasets) counts as one setting
                    walk(inner, key)
                    if inner is not hint:
                        out[inner] = key
                        _containers.add(inner)

    _containers: set[type] = set()
    walk(config.Params, "")
    out["_containers"] = _containers  # type: ignore[index]
    return out


def _building() -> bool:
    """Whether the read happens inside params' own building, copying or validation (at any depth)."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_filename.endswith("dataclasses.py") or (
                code.co_name in _SKIP_FUNCTIONS and code.co_filename.endswith("config.py")):
            return True
        frame = frame.f_back
    return False


_ACTIVE: dict = {}


def trace_from_env(stage: str | None = None, worker: bool = False) -> None:
    """Install the recorder where DER_TRACE_PARAMS is set. A stage script names its stage (and passes it on to
    its worker processes in DER_TRACE_STAGE); a worker (router/parallel.py) records into <stage>.<pid>.json
    after each job (``dump``), since a worker process never runs atexit handlers."""
    folder = os.environ.get("DER_TRACE_PARAMS")
    stage = stage or os.environ.get("DER_TRACE_STAGE")
    if not folder or not stage or _ACTIVE:
        return
    os.environ["DER_TRACE_STAGE"] = stage
    paths = _paths_by_type()
    containers = paths.pop("_containers")  # type: ignore[arg-type]
    seen: set[str] = set()

    def install(cls: type, prefix: str) -> None:
        fields = {f.name for f in dataclasses.fields(cls)}
        original = cls.__getattribute__

        def getattribute(self, name):  # noqa: ANN001 - the data model's signature
            value = original(self, name)
            if name in fields and not dataclasses.is_dataclass(value) and not _building():
                seen.add(prefix if cls in containers else (f"{prefix}.{name}" if prefix else name))
            return value

        cls.__getattribute__ = getattribute

    for cls, prefix in paths.items():
        install(cls, prefix)

    def dump() -> None:
        out = Path(folder) / (f"{stage}.{os.getpid()}.json" if worker else f"{stage}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        old = set(json.loads(out.read_text())) if out.exists() else set()
        out.write_text(json.dumps(sorted((seen | old) - {"root"}), indent=1))

    _ACTIVE["dump"] = dump
    if not worker:
        atexit.register(dump)


def dump() -> None:
    """Write what this process has recorded so far (a worker's reads, after each of its jobs)."""
    if _ACTIVE:
        _ACTIVE["dump"]()
