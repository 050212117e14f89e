"""Load a COCO instances JSON (detection format) into the normalized index.

Reads the official files as they are: ``instances_val2017.json``, panoptic files converted to
detection format, and the shapes world's eval split. Everything is checked before anything is
returned, and each problem is reported with the file and the fix (`InputFileError`).

Thing vs stuff: a category's ``isthing`` field decides when present. Panoptic categories converted
to detection format sometimes lose that field; such files are recognised by the ``color`` field that
every panoptic category carries, and then COCO's own numbering decides (ids 1-91 are the detection
"thing" ids, 92 and above are COCO-Stuff / panoptic "stuff"). Otherwise every category is a thing,
as in the detection files. The rule used is recorded in the index notes.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
from pycocotools.coco import COCO

from ..errors import InputFileError, preview
from .index import AnnotationIndex

COCO_LAST_THING_ID = 91  # COCO detection ids run 1..90 (91 unused); COCO-Stuff/panoptic stuff starts at 92
REQUIRED_KEYS = {
    "images": ("id", "file_name"),
    "annotations": ("image_id", "category_id"),
    "categories": ("id", "name"),
}


def read_json(path: Path, what: str):
    if not path.exists():
        raise InputFileError(path, f"{what} file does not exist", "check the path you configured")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputFileError(
            path, f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})",
            f"the file is truncated or corrupt: download or export the {what} file again",
        ) from None  # fmt: skip
    except UnicodeDecodeError as e:
        raise InputFileError(path, f"is not UTF-8 text ({e})", f"point the loader at the {what} JSON file") from None


def _check_structure(path: Path, data) -> None:
    if not isinstance(data, dict):
        raise InputFileError(path, f"top level is a JSON {type(data).__name__}, not an object",
                             "a COCO instances file is an object with images, annotations and categories")  # fmt: skip
    for key, fields in REQUIRED_KEYS.items():
        if key not in data:
            raise InputFileError(path, f"missing top-level key {key!r}",
                                 "a COCO instances file needs 'images', 'annotations' and 'categories'")  # fmt: skip
        if not isinstance(data[key], list):
            raise InputFileError(path, f"{key!r} is a {type(data[key]).__name__}, not a list", "fix the export")
        for i, rec in enumerate(data[key]):
            missing = [f for f in fields if not isinstance(rec, dict) or f not in rec]
            if missing:
                raise InputFileError(path, f"{key}[{i}] has no {', '.join(repr(m) for m in missing)}",
                                     f"every entry of {key!r} needs {', '.join(fields)}")  # fmt: skip


def _duplicates(values) -> list:
    return sorted(v for v, n in Counter(values).items() if n > 1)


def _thing_rule(categories: list[dict]) -> tuple[str, callable]:
    if any("isthing" in c for c in categories):
        return "isthing field", lambda c: bool(c.get("isthing", 1))
    if categories and all("color" in c for c in categories) and any(c["id"] > COCO_LAST_THING_ID for c in categories):
        return (f"panoptic categories without isthing: ids <= {COCO_LAST_THING_ID} are things (COCO numbering)",
                lambda c: c["id"] <= COCO_LAST_THING_ID)  # fmt: skip
    return "no isthing field: every category is a thing", lambda c: True


def load_coco(
    annotations: str | Path,
    source: str,
    split: str,
    images_dir: str | Path | None = None,
    require_images: bool = False,
) -> AnnotationIndex:
    """Read a COCO instances JSON into the normalized index.

    With `require_images`, every listed image file must exist under `images_dir`.
    """
    path = Path(annotations)
    data = read_json(path, "COCO annotation")
    _check_structure(path, data)

    dup_images = _duplicates(img["id"] for img in data["images"])
    if dup_images:
        raise InputFileError(path, f"duplicate image ids {preview(dup_images)}",
                             "each entry of 'images' needs its own id; remove the repeated entries")  # fmt: skip
    dup_cats = _duplicates(c["id"] for c in data["categories"])
    if dup_cats:
        raise InputFileError(path, f"duplicate category ids {preview(dup_cats)}", "give each category its own id")
    image_ids = {img["id"] for img in data["images"]}
    cat_ids = {c["id"] for c in data["categories"]}
    orphans = sorted({a["image_id"] for a in data["annotations"]} - image_ids, key=str)
    if orphans:
        raise InputFileError(path, f"annotations point at image ids not listed in 'images': {preview(orphans)}",
                             "use the annotation file that belongs to these images, or drop those annotations")  # fmt: skip
    unknown = sorted({a["category_id"] for a in data["annotations"]} - cat_ids, key=str)
    if unknown:
        raise InputFileError(path, f"annotations use category ids not listed in 'categories': {preview(unknown)}",
                             "add the categories or drop those annotations")  # fmt: skip

    if require_images:
        if images_dir is None:
            raise InputFileError(path, "images are required but no image folder was given",
                                 "configure the folder holding the images (e.g. val2017/)")  # fmt: skip
        missing = [img["file_name"] for img in data["images"] if not (Path(images_dir) / img["file_name"]).is_file()]
        if missing:
            raise InputFileError(Path(images_dir), f"{len(missing)} of {len(data['images'])} images listed in {path.name} "
                                 f"are missing: {preview(missing)}", "copy the images into this folder or fix the path")  # fmt: skip

    # pycocotools builds the canonical per-image index (imgToAnns) the rest of the COCO ecosystem uses.
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()

    rule, is_thing = _thing_rule(data["categories"])
    thing_ids = {c["id"] for c in data["categories"] if is_thing(c)}
    categories = pa.table({
        "source": [source] * len(data["categories"]),
        "category_id": [str(c["id"]) for c in data["categories"]],
        "name": [c["name"] for c in data["categories"]],
        "parent": [c.get("supercategory") or None for c in data["categories"]],
        "is_thing": [c["id"] in thing_ids for c in data["categories"]],
    })  # fmt: skip
    images = pa.table({
        "source": [source] * len(coco.imgs),
        "split": [split] * len(coco.imgs),
        "image_id": [str(i) for i in coco.imgs],
        "file_name": [img["file_name"] for img in coco.imgs.values()],
        "width": [img.get("width") for img in coco.imgs.values()],
        "height": [img.get("height") for img in coco.imgs.values()],
    })  # fmt: skip

    counts: dict[tuple, list] = {}
    for image_id, anns in coco.imgToAnns.items():
        for ann in anns:
            if ann["category_id"] not in thing_ids:
                continue
            entry = counts.setdefault((image_id, ann["category_id"]), [0, False])
            entry[0] += 1
            entry[1] = entry[1] or bool(ann.get("iscrowd", 0))
    keys = sorted(counts, key=lambda k: (str(k[0]), str(k[1])))
    instance_counts = pa.table({
        "source": [source] * len(keys),
        "split": [split] * len(keys),
        "image_id": [str(k[0]) for k in keys],
        "category_id": [str(k[1]) for k in keys],
        "count": [counts[k][0] for k in keys],
        "crowd": [counts[k][1] for k in keys],
    })  # fmt: skip
    files = {"coco_annotations": str(path)}
    if images_dir is not None:
        files["coco_images"] = str(images_dir)
    return AnnotationIndex(source, categories, images, instance_counts, files, [f"coco {path.name}: {rule}"])
