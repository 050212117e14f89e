"""Load OpenImages V7 box annotations (CSV + class descriptions + hierarchy JSON) into the index.

The real train box file has 14.6M rows, so the CSV is read and aggregated by DuckDB's parallel CSV
reader; Python only touches the small class-description and hierarchy files. Box files with the
extra click columns (``XClick1X`` ...) of the V6/V7 train release are read as they are: only the
official 13 columns must be present.

Categories get one row per (class, parent) edge of the hierarchy's ``Subcategory`` links (``Part``
links are not "is a" and give no parent). A class directly under the root, or in no link at all,
has parent NULL. Every OpenImages class is a thing.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import duckdb
import pyarrow as pa
from PIL import Image

from ..errors import InputFileError, preview
from .coco import read_json
from .index import AnnotationIndex

BOX_HEADER = [
    "ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
    "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside",
]  # fmt: skip


def read_class_descriptions(path: Path) -> dict[str, str]:
    """LabelName -> DisplayName from the two-column CSV (with or without a header row)."""
    if not path.exists():
        raise InputFileError(path, "class descriptions file does not exist", "check the path you configured")
    names: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if lineno == 1 and row == ["LabelName", "DisplayName"]:
                continue
            if len(row) != 2 or not row[0]:
                raise InputFileError(path, f"line {lineno} has {len(row)} fields, expected 2 (LabelName,DisplayName)",
                                     "use OpenImages' class-descriptions-boxable.csv as downloaded")  # fmt: skip
            if row[0] in names:
                raise InputFileError(path, f"line {lineno}: label {row[0]!r} is described twice", "keep one row per label")
            names[row[0]] = row[1]
    if not names:
        raise InputFileError(path, "no class descriptions", "use OpenImages' class-descriptions-boxable.csv")
    return names


def read_hierarchy(path: Path, names: dict[str, str]) -> tuple[str, set[tuple[str, str | None]]]:
    """The (child, parent-or-None) edges of the hierarchy's Subcategory links, and the root label."""
    tree = read_json(path, "OpenImages hierarchy")
    if not isinstance(tree, dict) or "LabelName" not in tree:
        raise InputFileError(path, "top level is not an object with a 'LabelName'",
                             "use OpenImages' bbox_labels_600_hierarchy.json as downloaded")  # fmt: skip
    root = tree["LabelName"]
    edges: set[tuple[str, str | None]] = set()
    seen: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        label = node.get("LabelName")
        if not isinstance(label, str):
            raise InputFileError(path, f"a node has no string 'LabelName': {str(node)[:80]}", "fix the hierarchy file")
        seen.add(label)
        for child in node.get("Subcategory", []):
            edges.add((child.get("LabelName"), None if label == root else label))
            stack.append(child)
        stack.extend(node.get("Part", []))
    unknown = sorted(seen - set(names) - {root})
    if unknown:
        raise InputFileError(path, f"names {len(unknown)} labels that the class descriptions do not: {preview(unknown)}",
                             "use the hierarchy and the class-descriptions file of the same OpenImages release")  # fmt: skip
    return root, edges


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; a file that is no image is named with the fix."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError) as e:
        raise InputFileError(path, f"is not a readable image ({e})", "replace it with the original image file") from None


def _with_image_sizes(images: pa.Table, boxes: Path, images_dir: str | Path | None) -> pa.Table:
    """Check that every image file exists and fill width/height from the file headers."""
    if images_dir is None:
        raise InputFileError(boxes, "images are required but no image folder was given",
                             "configure the folder holding the images")  # fmt: skip
    file_names = images.column("file_name").to_pylist()
    present = set(os.listdir(images_dir)) if Path(images_dir).is_dir() else set()
    missing = [n for n in file_names if n not in present]
    if missing:
        raise InputFileError(Path(images_dir), f"{len(missing)} of {len(file_names)} images named in {boxes.name} "
                             f"are missing: {preview(missing)}", "copy the images into this folder or fix the path")  # fmt: skip
    sizes = [image_size(Path(images_dir) / name) for name in file_names]
    images = images.set_column(images.schema.get_field_index("width"), "width", pa.array([w for w, _ in sizes], pa.int32()))
    return images.set_column(images.schema.get_field_index("height"), "height", pa.array([h for _, h in sizes], pa.int32()))


def _check_box_header(path: Path) -> None:
    if not path.exists():
        raise InputFileError(path, "box annotation file does not exist", "check the path you configured")
    with open(path, encoding="utf-8", errors="replace") as f:
        header = [h.strip().strip('"') for h in f.readline().rstrip("\r\n").split(",")]
    missing = [c for c in BOX_HEADER if c not in header]
    if missing:
        raise InputFileError(path, f"header lacks {', '.join(missing)} (found: {','.join(header)[:200]})",
                             "the first line must be OpenImages' box header: " + ",".join(BOX_HEADER))  # fmt: skip


def load_openimages(
    boxes: str | Path,
    class_descriptions: str | Path,
    hierarchy: str | Path,
    source: str,
    split: str,
    images_dir: str | Path | None = None,
    image_ext: str = ".jpg",
    require_images: bool = False,
    threads: int | None = None,
) -> AnnotationIndex:
    """Read OpenImages box annotations into the normalized index.

    `image_ext` names the image files (`<ImageID><ext>`); with `require_images` each must exist
    under `images_dir` and its size is read from the file header.
    """
    boxes, class_descriptions, hierarchy = Path(boxes), Path(class_descriptions), Path(hierarchy)
    names = read_class_descriptions(class_descriptions)
    _root, edges = read_hierarchy(hierarchy, names)
    _check_box_header(boxes)

    with duckdb.connect() as con:
        if threads:
            con.execute(f"set threads = {int(threads)}")
        try:
            con.execute(
                """
                create table counts as
                select ImageID as image_id, LabelName as category_id,
                       count(*)::INTEGER as count, bool_or(IsGroupOf = 1) as crowd
                from read_csv(?, header = true, auto_detect = true,
                              types = {'ImageID': 'VARCHAR', 'LabelName': 'VARCHAR', 'IsGroupOf': 'TINYINT'})
                group by all
                """,
                [str(boxes)],
            )
        except duckdb.Error as e:
            first = str(e).strip().splitlines()[0]
            raise InputFileError(boxes, f"cannot be read as an OpenImages box CSV: {first}",
                                 "the file is truncated or not a box CSV: download it again") from None  # fmt: skip
        con.register("labels", pa.table({"label": list(names)}))
        unknown = [r[0] for r in con.execute(
            "select distinct category_id from counts anti join labels on category_id = label order by 1").fetchall()]  # fmt: skip
        if unknown:
            raise InputFileError(boxes, f"uses labels missing from {class_descriptions.name}: {preview(unknown)}",
                                 "use the class-descriptions file of the same OpenImages release")  # fmt: skip
        instance_counts = con.sql(
            "select ?::VARCHAR as source, ?::VARCHAR as split, image_id, category_id, count, crowd "
            "from counts order by image_id, category_id", params=[source, split]).to_arrow_table()  # fmt: skip
        # the images table is built in SQL: at 1.7M images, Python lists cost more than the CSV scan
        images = con.sql(
            "select ?::VARCHAR as source, ?::VARCHAR as split, image_id, image_id || ? as file_name, "
            "NULL::INTEGER as width, NULL::INTEGER as height from (select distinct image_id from counts) order by image_id",
            params=[source, split, image_ext]).to_arrow_table()  # fmt: skip

    if require_images:
        images = _with_image_sizes(images, boxes, images_dir)
    parents_of: dict[str, list[str | None]] = {label: [] for label in names}
    for child, parent in sorted(edges, key=lambda e: (e[0], e[1] or "")):
        parents_of[child].append(names[parent] if parent else None)
    cat_rows = [(label, names[label], parent) for label in names for parent in (parents_of[label] or [None])]
    categories = pa.table({
        "source": [source] * len(cat_rows), "category_id": [r[0] for r in cat_rows],
        "name": [r[1] for r in cat_rows], "parent": [r[2] for r in cat_rows], "is_thing": [True] * len(cat_rows),
    })  # fmt: skip
    files = {"openimages_boxes": str(boxes), "openimages_classes": str(class_descriptions),
             "openimages_hierarchy": str(hierarchy)}  # fmt: skip
    if images_dir is not None:
        files["openimages_images"] = str(images_dir)
    return AnnotationIndex(source, categories, images, instance_counts, files, [])
