"""The normalized annotation index every source is loaded into.

Three tables, the same for COCO, OpenImages and the shapes world:

* ``categories(source, category_id, name, parent, is_thing)``: OpenImages has one row per
  (class, parent) edge of its hierarchy, since a class may have two parents; ``parent`` is the
  parent's *name* (COCO's super-category, OpenImages' parent class), NULL at the top.
* ``images(source, split, image_id, file_name, width, height)``
* ``instance_counts(source, split, image_id, category_id, count, crowd)``: ``count`` is every box of
  that category in that image, crowd/group boxes included (COCO image 439180 has 12 horses, one of
  them a crowd box); ``crowd`` is true when any of those boxes is a crowd (COCO ``iscrowd``) or
  group (OpenImages ``IsGroupOf``) box. Stuff categories never appear here.

Ids are strings in every source (OpenImages ids are hex strings, COCO's integers are rendered as
decimal), so one catalogue holds all sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

CATEGORIES_SCHEMA = pa.schema([
    ("source", pa.string()), ("category_id", pa.string()), ("name", pa.string()),
    ("parent", pa.string()), ("is_thing", pa.bool_()),
])  # fmt: skip
IMAGES_SCHEMA = pa.schema([
    ("source", pa.string()), ("split", pa.string()), ("image_id", pa.string()),
    ("file_name", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
])  # fmt: skip
INSTANCE_COUNTS_SCHEMA = pa.schema([
    ("source", pa.string()), ("split", pa.string()), ("image_id", pa.string()),
    ("category_id", pa.string()), ("count", pa.int32()), ("crowd", pa.bool_()),
])  # fmt: skip

INDEX_TABLES = {
    "categories": CATEGORIES_SCHEMA,
    "images": IMAGES_SCHEMA,
    "instance_counts": INSTANCE_COUNTS_SCHEMA,
}


@dataclass
class AnnotationIndex:
    """One source's index as Arrow tables, plus what was read to build it (for lineage)."""

    source: str
    categories: pa.Table
    images: pa.Table
    instance_counts: pa.Table
    source_files: dict[str, str] = field(default_factory=dict)  # role -> path
    notes: list[str] = field(default_factory=list)  # decisions the loader took, e.g. how stuff was told apart

    def __post_init__(self):
        for name, schema in INDEX_TABLES.items():
            table = getattr(self, name)
            if not table.schema.equals(schema):
                setattr(self, name, table.select(schema.names).cast(schema))

    def tables(self) -> dict[str, pa.Table]:
        return {name: getattr(self, name) for name in INDEX_TABLES}

    def row_counts(self) -> dict[str, int]:
        return {name: table.num_rows for name, table in self.tables().items()}


def concat_indexes(source: str, parts: list[AnnotationIndex]) -> AnnotationIndex:
    """Join several splits of one source (e.g. the shapes world's COCO eval + OpenImages train).

    Categories are de-duplicated: both splits describe the same taxonomy.
    """
    import duckdb

    images = pa.concat_tables([p.images for p in parts])
    counts = pa.concat_tables([p.instance_counts for p in parts])
    cats = pa.concat_tables([p.categories for p in parts])
    with duckdb.connect() as con:
        con.register("c", cats)
        cats = con.sql("select distinct * from c order by category_id, parent nulls first").to_arrow_table()
    files = {f"{i}:{k}": v for i, p in enumerate(parts) for k, v in p.source_files.items()}
    notes = [n for p in parts for n in p.notes]
    return AnnotationIndex(source, cats, images, counts, files, notes)
