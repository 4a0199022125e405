"""Parquet and JSON I/O: atomic writes, schema checks on read."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


class SchemaError(ValueError):
    """A table on disk does not have the schema the code expects."""


class CorruptTableError(ValueError):
    """A table on disk cannot be read (truncated, not Parquet); the message says how to make it again."""


class EmptyTableError(ValueError):
    """A writer would replace a non-empty table with an empty one (nothing is written)."""


class DiskFullError(OSError):
    """No space left on the device while writing ``filename``; the file it would replace is untouched."""

    def __init__(self, path: Path):
        super().__init__(errno.ENOSPC, "No space left on device", str(path))


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and (exc.errno == errno.ENOSPC or "No space left on device" in str(exc))


@contextlib.contextmanager
def _naming_the_file(path: Path):
    """A full disk while writing ``path`` is raised as DiskFullError naming it (a bare ENOSPC names no file)."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(path) from exc
        raise


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
    with _naming_the_file(path):
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


def write_table(table: pa.Table, path: Path, schema: pa.Schema, allow_empty: bool = False) -> Path:
    """Cast ``table`` to ``schema`` and write it with zstd compression via a temp file and rename.

    An empty ``table`` never replaces a non-empty file at ``path`` (EmptyTableError, nothing written) unless
    ``allow_empty``: an empty result is almost always bad input, and the table it would replace is good data."""
    path = Path(path)
    table = table.select(schema.names).cast(schema)
    if table.num_rows == 0 and not allow_empty:
        _refuse_emptying(path)
    with _naming_the_file(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_beside(path)
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def _refuse_emptying(path: Path) -> None:
    try:
        rows = pq.read_metadata(path).num_rows if path.is_file() else 0
    except Exception:  # noqa: BLE001 - an unreadable file holds nothing worth keeping
        rows = 0
    if rows:
        raise EmptyTableError(f"{path}: refusing to replace its {rows} rows with an empty table (nothing was "
                              f"written); check the stage's input, which gave no rows")


def write_rows(rows: list[dict[str, Any]], path: Path, schema: pa.Schema, allow_empty: bool = False) -> Path:
    return write_table(pa.Table.from_pylist(rows, schema=schema), path, schema, allow_empty=allow_empty)


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


def read_table(path: Path, schema: pa.Schema, remake: str | None = None) -> pa.Table:
    """The table at ``path``, its schema checked. ``remake``: the command that writes it (named, with
    how to get the committed copy back, when the file is missing, unreadable or of another schema)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; run {remake or 'the stage that writes it (see `dvc dag`)'} "
                                f"first")
    how = (f"make it again with {remake}" if remake else "make it again with the stage that writes it (see "
           "`dvc dag`)") + f", or get the committed copy back with `git checkout -- {path}`"
    try:
        table = pq.read_table(path)
    except PermissionError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:  # truncated, not Parquet
        raise CorruptTableError(f"{path}: unreadable table ({exc}); {how}") from None
    try:
        return check_schema(table, schema, str(path))
    except SchemaError as exc:
        raise SchemaError(f"{exc}; {how}") from None


def write_json(obj: Any, path: Path) -> Path:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
    return Path(path)
