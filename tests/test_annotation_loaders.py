"""Loaders: the shapes world read back exactly, and the real COCO / OpenImages files as they are."""

from __future__ import annotations

from collections import Counter

import pytest

from mimic_pipeline.core.annotations import load_coco, load_openimages, load_source, shapes_world_parts
from mimic_pipeline.core.shapes_world import label_name

from .conftest import REAL_DATA, TINY, real_data


def expected_counts(records, key) -> dict[tuple[str, str], tuple[int, bool]]:
    out: dict[tuple[str, str], list] = {}
    for rec in records:
        for obj in rec.objects:
            e = out.setdefault((rec.image_id, key(obj.category)), [0, False])
            e[0] += 1
            e[1] = e[1] or obj.crowd
    return {k: tuple(v) for k, v in out.items()}


def as_counts(table, split) -> dict[tuple[str, str], tuple[int, bool]]:
    rows = table.to_pylist()
    return {(r["image_id"], r["category_id"]): (r["count"], r["crowd"]) for r in rows if r["split"] == split}


def test_shapes_world_round_trip_gives_exactly_the_rendered_counts(tiny_world):
    index = load_source("shapes", shapes_world_parts(tiny_world.files.root))
    coco_ids = {name: str(cid) for cid, name, _ in TINY.categories()}
    assert as_counts(index.instance_counts, "eval") == expected_counts(tiny_world.eval_images, coco_ids.__getitem__)
    assert as_counts(index.instance_counts, "train") == expected_counts(tiny_world.train_images, label_name)

    images = index.images.to_pylist()
    eval_images = [r for r in images if r["split"] == "eval"]
    assert len(eval_images) == TINY.n_eval_images  # COCO lists every image, empty ones included
    assert all((r["width"], r["height"]) == (TINY.image_size, TINY.image_size) for r in images)
    train_ids = {r["image_id"] for r in images if r["split"] == "train"}
    # OpenImages lists only images that have boxes, exactly as in the real box CSV
    assert train_ids == {r.image_id for r in tiny_world.train_images if r.objects}

    cats = index.categories.to_pylist()
    coco_cats = {(c["name"], c["parent"]) for c in cats if not c["category_id"].startswith("/m/")}
    assert coco_cats == {(name, parent) for _, name, parent in TINY.categories()}
    oi_parents = {c["name"]: c["parent"] for c in cats if c["category_id"].startswith("/m/")}
    assert oi_parents["hexagon"] == "polygon" and oi_parents["polygon"] is None
    assert all(c["is_thing"] for c in cats)


@real_data
def test_real_coco_val2017_subset():
    index = load_coco(REAL_DATA / "coco_instances_val2017_small.json", "coco", "val2017")
    assert index.row_counts()["categories"] == 80
    assert index.row_counts()["images"] == 3
    counts = as_counts(index.instance_counts, "val2017")
    assert sum(c for c, _ in counts.values()) == 34
    assert counts[("448263", "1")] == (1, True)  # the one crowd box: person
    assert counts[("397133", "51")] == (4, False)  # four bowls
    cats = {c["category_id"]: c for c in index.categories.to_pylist()}
    assert cats["1"]["parent"] == "person" and cats["90"]["name"] == "toothbrush"
    assert all(c["is_thing"] for c in cats.values())


@real_data
def test_real_coco_panoptic_sample_excludes_stuff():
    index = load_coco(REAL_DATA / "coco_panoptic_sample_detection.json", "coco", "val2017")
    cats = {c["category_id"]: c for c in index.categories.to_pylist()}
    assert len(cats) == 133
    assert sum(c["is_thing"] for c in cats.values()) == 80
    assert cats["19"]["is_thing"] and not cats["187"]["is_thing"]  # horse vs sky-other-merged
    counts = as_counts(index.instance_counts, "val2017")
    assert counts[("439180", "19")] == (12, True)  # 12 horses, one of the boxes a crowd
    assert counts[("439180", "1")] == (14, True)  # 14 people with a crowd flag
    assert counts[("439180", "8")] == (2, False)  # 2 trucks
    assert all(cats[cid]["is_thing"] for _, cid in counts), "stuff categories are never counted"
    assert any("ids <= 91 are things" in n for n in index.notes)


@real_data
def test_real_openimages_hierarchy_and_descriptions(tmp_path):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(
        "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside\n"
        "000002b66c9c498e,xclick,/m/01g317,1,0.1,0.2,0.1,0.2,0,0,0,0,0\n"
        "000002b66c9c498e,xclick,/m/01g317,1,0.3,0.4,0.1,0.2,0,0,1,0,0\n"
        "000002b66c9c498e,xclick,/m/0k4j,1,0.5,0.9,0.5,0.9,0,0,0,0,0\n"
        "00000c4c7f16fbba,activemil,/m/0k4j,1,0.5,0.9,0.5,0.9,1,0,0,0,0\n"
    )
    index = load_openimages(boxes, REAL_DATA / "oid_class_descriptions_boxable.csv",
                            REAL_DATA / "oid_bbox_labels_600_hierarchy.json", "openimages", "train")  # fmt: skip
    cats = index.categories.to_pylist()
    assert len({c["category_id"] for c in cats}) == 601
    parents = {}
    for c in cats:
        parents.setdefault(c["name"], set()).add(c["parent"])
    assert parents["Car"] == {"Land vehicle"}
    assert parents["Land vehicle"] == {"Vehicle"}
    assert parents["Vehicle"] == {None}
    assert max(len(p) for p in parents.values()) >= 2, "some classes have two parents"
    assert Counter(len(p) for p in parents.values())[2] == sum(1 for p in parents.values() if len(p) == 2)
    counts = as_counts(index.instance_counts, "train")
    assert counts == {("000002b66c9c498e", "/m/01g317"): (2, True), ("000002b66c9c498e", "/m/0k4j"): (1, False),
                      ("00000c4c7f16fbba", "/m/0k4j"): (1, False)}  # fmt: skip
    assert sorted(index.images.column("file_name").to_pylist()) == ["000002b66c9c498e.jpg", "00000c4c7f16fbba.jpg"]


@real_data
def test_real_openimages_box_file_with_click_columns_is_read(tmp_path):
    """The V6/V7 train release appends XClick1X..YClick4Y; only the 13 official columns are required."""
    header = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,"
              "IsInside,XClick1X,XClick2X,XClick3X,XClick4X,XClick1Y,XClick2Y,XClick3Y,XClick4Y")  # fmt: skip
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(header + "\n" + "000002b66c9c498e,xclick,/m/0k4j,1,0.1,0.2,0.1,0.2,0,0,0,0,0" + ",0.1" * 8 + "\n")
    index = load_openimages(boxes, REAL_DATA / "oid_class_descriptions_boxable.csv",
                            REAL_DATA / "oid_bbox_labels_600_hierarchy.json", "openimages", "train")  # fmt: skip
    assert as_counts(index.instance_counts, "train") == {("000002b66c9c498e", "/m/0k4j"): (1, False)}


@real_data
def test_real_coco_images_are_required_when_asked(tmp_path):
    index = load_coco(REAL_DATA / "coco_panoptic_sample_detection.json", "coco", "val2017",
                      images_dir=REAL_DATA, require_images=True)  # fmt: skip
    assert index.row_counts()["images"] == 2
    assert {r["file_name"] for r in index.images.to_pylist()} == {"000000142238.jpg", "000000439180.jpg"}
    with pytest.raises(ValueError, match="3 of 3 images listed in coco_instances_val2017_small.json are missing"):
        load_coco(REAL_DATA / "coco_instances_val2017_small.json", "coco", "val2017", images_dir=REAL_DATA, require_images=True)
