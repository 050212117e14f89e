"""The DuckDB catalogue at ``<data dir>/mimic.duckdb``: indexes and results, queried by users.

One writer at a time (Dagster's ``duckdb`` pool has limit 1); connections are short. Users and
checks read through `query`, which opens the file read-only so it can never change it.

DuckDB locks the file per process: while one process holds a read-write connection no other can open
it at all, and while readers hold it no writer can. Runs of a backfill read and write from several
processes at once, so every connection waits (up to ``MIMIC_DUCKDB_WAIT_S`` seconds, default 120)
for a conflicting lock to go instead of failing on the first try.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from collections.abc import Iterator

import duckdb
import pyarrow as pa

from .annotations.index import INDEX_TABLES, AnnotationIndex
from .files import atomic_path

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
CATALOG_FILE = "mimic.duckdb"
SCHEMA_FILES = ("annotations", "evaluation", "training", "attention")  # DDL applied on every writer connection (idempotent)


class CatalogError(RuntimeError):
    """The catalogue cannot be opened or queried as asked."""


def catalog_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / CATALOG_FILE


def load_sql(name: str) -> str:
    """The text of ``sql/<name>.sql``."""
    path = SQL_DIR / f"{name}.sql"
    if not path.exists():
        raise CatalogError(f"no SQL file {path}: is the project installed in editable mode (pip install -e .)?")
    return path.read_text()


def named_queries(name: str) -> dict[str, str]:
    """Split ``sql/<name>.sql`` at ``-- name: X`` markers into {X: query}."""
    parts = re.split(r"^-- name: *(\S+) *$", load_sql(name), flags=re.M)
    return {parts[i]: parts[i + 1].strip().rstrip(";") for i in range(1, len(parts), 2)}


def lock_wait_s() -> float:
    return float(os.environ.get("MIMIC_DUCKDB_WAIT_S", "120"))


def _connect(db_path: Path, read_only: bool, wait_s: float | None) -> duckdb.DuckDBPyConnection:
    """`duckdb.connect`, retried with backoff while another process holds a conflicting lock."""
    deadline = time.monotonic() + (lock_wait_s() if wait_s is None else wait_s)
    pause = 0.05
    while True:
        try:
            return duckdb.connect(str(db_path), read_only=read_only)
        except duckdb.IOException as e:
            if "lock" not in str(e).lower() or time.monotonic() + pause > deadline:
                mode = "read-only" if read_only else "for writing"
                raise CatalogError(f"cannot open {db_path} {mode} ({e}); another process holds it: wait for the "
                                   "running materialization or stop the process that holds it") from None  # fmt: skip
            time.sleep(pause)
            pause = min(2 * pause, 1.0)


def connect_writer(db_path: str | Path, wait_s: float | None = None) -> duckdb.DuckDBPyConnection:
    """A read-write connection with every table of the schema created."""
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    con = _connect(db_path, read_only=False, wait_s=wait_s)
    for name in SCHEMA_FILES:
        con.execute(_ddl(load_sql(name)))
    return con


def _ddl(sql: str) -> str:
    """The statements of a .sql file before its first named query."""
    return re.split(r"^-- name:", sql, maxsplit=1, flags=re.M)[0]


@contextlib.contextmanager
def transaction(db_path: str | Path, wait_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A writer connection inside one transaction: committed if the block succeeds, else rolled back."""
    with connect_writer(db_path, wait_s) as con:
        con.execute("begin transaction")
        try:
            yield con
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise


def replace_rows(db_path: str | Path, table: str, where: dict, rows: pa.Table, wait_s: float | None = None) -> int:
    """Delete the rows of `table` matching `where` and insert `rows`, in one transaction."""
    cond = " and ".join(f"{k} = ?" for k in where)
    with transaction(db_path, wait_s) as con:
        con.execute(f"delete from {table} where {cond}", list(where.values()))
        con.register("new_rows", rows)
        con.execute(f"insert into {table} by name select * from new_rows")
    return rows.num_rows


def connect_reader(db_path: str | Path, wait_s: float | None = None) -> duckdb.DuckDBPyConnection:
    db_path = Path(db_path)
    if not db_path.exists():
        raise CatalogError(f"no catalogue at {db_path}: run `mimic demo` (or materialize the annotation_index asset) first")
    return _connect(db_path, read_only=True, wait_s=wait_s)


def query(db_path: str | Path, sql: str, params=None, wait_s: float | None = None) -> tuple[list[str], list[tuple]]:
    """Run one query read-only; returns (column names, rows)."""
    with connect_reader(db_path, wait_s) as con:
        try:
            cur = con.execute(sql, params) if params is not None else con.execute(sql)
        except duckdb.Error as e:
            raise CatalogError(str(e).strip()) from None
        if cur.description is None:
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()


def replace_source_index(db_path: str | Path, index: AnnotationIndex, config_hash: str | None = None) -> dict[str, int]:
    """Replace every row of `index.source` in one transaction; returns rows written per table.

    A failure anywhere rolls back, leaving the previous rows of that source (and every other source)
    exactly as they were.
    """
    counts = index.row_counts()
    with transaction(db_path) as con:
        for name, table in index.tables().items():
            con.execute(f"delete from {name} where source = ?", [index.source])
            con.register(f"new_{name}", table)
            con.execute(f"insert into {name} by name select * from new_{name}")
            con.unregister(f"new_{name}")
        con.execute(
            "insert into annotation_builds values (?, ?, ?, ?, ?, ?, ?, ?)",
            [index.source, datetime.now(UTC).replace(tzinfo=None), json.dumps(index.source_files),
             json.dumps(index.notes), config_hash, counts["categories"], counts["images"], counts["instance_counts"]],
        )  # fmt: skip
    return counts


def export_index_parquet(index: AnnotationIndex, folder: str | Path) -> dict[str, Path]:
    """Write each index table as ``<folder>/<table>.parquet`` (atomic per file); returns the paths."""
    import pyarrow.parquet as pq

    out = {}
    for name in INDEX_TABLES:
        path = Path(folder) / f"{name}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(getattr(index, name), tmp, compression="zstd")
        out[name] = path
    return out


def create_item_views(db_path: str | Path, datasets_root: str | Path) -> list[str]:
    """(Re)create the item views over the Parquet files that exist; returns the views made."""
    return create_parquet_views(db_path, "datasets", datasets_root)


def create_parquet_views(db_path: str | Path, sql_name: str, root: str | Path) -> list[str]:
    """(Re)create the views of ``sql/<sql_name>.sql`` over Parquet under `root` ({root} in the SQL)
    whose files exist (DuckDB rejects a view over a glob that matches nothing); returns the views made."""
    root = Path(root).resolve()
    made = []
    with connect_writer(db_path) as con:
        code = "\n".join(line for line in load_sql(sql_name).splitlines() if not line.lstrip().startswith("--"))
        for statement in map(str.strip, code.split(";")):
            if not statement:
                continue
            pattern = re.search(r"'\{root\}/([^']+)'", statement).group(1)
            if any(root.glob(pattern)):
                con.execute(statement.replace("{root}", str(root).replace("'", "''")))
                made.append(re.search(r"view (\w+)", statement).group(1))
    return made


def item_check_failures(db_path: str | Path, items_parquet: str | Path, checks: list[str],
                        task: str | None = None) -> dict[str, tuple[list[str], list[tuple]]]:  # fmt: skip
    """Run the named queries of sql/item_checks.sql over one items file (only `task`'s items when given);
    returns {check: (columns, offending rows)}."""
    queries = named_queries("item_checks")
    quoted = str(Path(items_parquet).resolve()).replace("'", "''")  # DDL takes no parameters
    where = f" where task = '{task}'" if task else ""
    out = {}
    with connect_reader(db_path) as con:
        con.execute(f"create temp view items as select * from read_parquet('{quoted}'){where}")
        for statement in filter(str.strip, queries["_prelude"].split(";")):
            con.execute(statement)
        for name in checks:
            cur = con.execute(queries[name])
            out[name] = ([d[0] for d in cur.description], cur.fetchall())
    return out
