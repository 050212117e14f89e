"""Standard Dagster metadata built from plain values, so every asset shows the same keys in the UI."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow as pa

from ..core.reports import png_markdown
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


def table_metadata(
    *, row_count: int, schema: pa.Schema | None = None, uri: str | Path | None = None,
    preview: tuple[list[str], list[tuple]] | None = None, descriptions: dict[str, str] | None = None,
) -> dict:  # fmt: skip
    """`dagster/row_count`, `dagster/column_schema`, `dagster/uri` and a Markdown `preview`."""
    md: dict = {"dagster/row_count": dg.MetadataValue.int(int(row_count))}
    if schema is not None:
        md["dagster/column_schema"] = column_schema(schema, descriptions)
    if uri is not None:
        md["dagster/uri"] = dg.MetadataValue.path(str(uri))
    if preview is not None:
        md["preview"] = dg.MetadataValue.md(markdown_table(*preview))
    return md


def image_markdown(path: str | Path, alt: str) -> dg.MetadataValue:
    """A PNG shown inline in the UI's metadata panel (embedded as a data URI; the path alone is not rendered)."""
    return dg.MetadataValue.md(png_markdown(path, alt))
