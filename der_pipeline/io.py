"""Parquet and JSON I/O: atomic writes, schema checks on read."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


class SchemaError(ValueError):
    """A table on disk does not have the schema the code expects."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> str:
    """A temp file next to ``path`` with the permissions a plain ``open`` would give (mkstemp makes it 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(table: pa.Table, path: Path, schema: pa.Schema) -> Path:
    """Cast ``table`` to ``schema`` and write it with zstd compression via a temp file and rename."""
    path = Path(path)
    table = table.select(schema.names).cast(schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_rows(rows: list[dict[str, Any]], path: Path, schema: pa.Schema) -> Path:
    return write_table(pa.Table.from_pylist(rows, schema=schema), path, schema)


def check_schema(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {missing}; expected {schema.names}")
    for f in schema:
        got = table.schema.field(f.name).type
        if not got.equals(f.type):
            raise SchemaError(f"{where}: column '{f.name}' has type {got}, expected {f.type}")
        if not f.nullable and table.column(f.name).null_count:
            raise SchemaError(f"{where}: column '{f.name}' has {table.column(f.name).null_count} null(s)")
    return table.select(schema.names)


def read_table(path: Path, schema: pa.Schema) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; run the stage that writes it first (see `dvc dag`)")
    return check_schema(pq.read_table(path), schema, str(path))


def write_json(obj: Any, path: Path) -> Path:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
    return Path(path)
