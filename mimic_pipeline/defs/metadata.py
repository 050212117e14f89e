"""Standard Dagster metadata built from plain values, so every asset shows the same keys in the UI."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow as pa

from ..core import catalog
from ..core.reports import png_markdown, study_plot
from ..core.tables import markdown_table

_ARROW_TO_SQL = {
    pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN",
    pa.float64(): "DOUBLE", pa.float32(): "FLOAT",
}  # fmt: skip


def column_schema(schema: pa.Schema, descriptions: dict[str, str] | None = None) -> dg.TableSchema:
    descriptions = descriptions or {}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(f.name, _ARROW_TO_SQL.get(f.type, str(f.type)), description=descriptions.get(f.name))
            for f in schema
        ]
    )


def catalog_schema(db_path: str | Path, relation: str) -> dg.TableSchema:
    """The columns of a DuckDB table or view of the catalogue, with their SQL types, read from DuckDB itself."""
    _, rows = catalog.query(db_path, "select column_name, data_type from information_schema.columns "
                            "where table_name = ? order by ordinal_position", [relation])  # fmt: skip
    return dg.TableSchema(columns=[dg.TableColumn(name, sql_type) for name, sql_type in rows])


def table_metadata(
    *, row_count: int, schema: pa.Schema | dg.TableSchema | None = None, uri: str | Path | None = None,
    preview: tuple[list[str], list[tuple]] | None = None, descriptions: dict[str, str] | None = None,
) -> dict:  # fmt: skip
    """`dagster/row_count`, `dagster/column_schema`, `dagster/uri` and a Markdown `preview`."""
    md: dict = {"dagster/row_count": dg.MetadataValue.int(int(row_count))}
    if schema is not None:
        md["dagster/column_schema"] = schema if isinstance(schema, dg.TableSchema) else column_schema(schema, descriptions)
    if uri is not None:
        md["dagster/uri"] = dg.MetadataValue.path(str(uri))
    if preview is not None:
        md["preview"] = dg.MetadataValue.md(markdown_table(*preview))
    return md


def image_markdown(path: str | Path, alt: str) -> dg.MetadataValue:
    """A PNG shown inline in the UI's metadata panel (embedded as a data URI; the path alone is not rendered)."""
    return dg.MetadataValue.md(png_markdown(path, alt))


def study_plots(rows: list[dict], folder: Path, title: str | None = None, studies=None) -> dict[str, dg.MetadataValue]:
    """One accuracy plot per study (`studies`, or every (task, axis) present in `rows`, eval_metrics
    rows) as `plot_<task>_<axis>` images; a study with no plain variant (pool1 / default) is left out."""
    plots = {}
    for task, axis in studies or sorted({(r["task"], r["axis"]) for r in rows}):
        path = study_plot(rows, task, axis, folder / f"{task}_{axis}.png")
        if path is not None:
            alt = f"{title}: {task} {axis.replace('_', ' ')}" if title else f"{task}_{axis}".replace("_", " ")
            plots[f"plot_{task}_{axis}"] = image_markdown(path, alt)
    return plots
