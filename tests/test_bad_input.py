"""Every kind of bad input gets an InputFileError naming the file, the problem and the fix."""

from __future__ import annotations

import json
import shutil

import pytest

from mimic_pipeline.core.annotations import load_coco, load_openimages
from mimic_pipeline.core.errors import InputFileError

GOOD_COCO = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10},
               {"id": 2, "file_name": "b.jpg", "width": 10, "height": 10}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "iscrowd": 0},
                    {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 2, 2], "iscrowd": 1}],
    "categories": [{"id": 1, "name": "cat", "supercategory": "animal"},
                   {"id": 2, "name": "dog", "supercategory": "animal"}],
}  # fmt: skip


def write_coco(tmp_path, doc) -> str:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def broken(**changes):
    doc = json.loads(json.dumps(GOOD_COCO))
    for key, value in changes.items():
        doc[key] = value
    return doc


def test_good_coco_loads(tmp_path):
    index = load_coco(write_coco(tmp_path, GOOD_COCO), "s", "val")
    assert index.instance_counts.to_pylist() == [
        {"source": "s", "split": "val", "image_id": "1", "category_id": "1", "count": 1, "crowd": False},
        {"source": "s", "split": "val", "image_id": "2", "category_id": "2", "count": 1, "crowd": True},
    ]


@pytest.mark.parametrize(
    "doc, problem, fix",
    [
        ('{"images": [', "is not valid JSON (Expecting value at line 1, column 13)", "truncated or corrupt"),
        ("[1, 2]", "top level is a JSON list, not an object", "images, annotations and categories"),
        (broken(annotations=None), "'annotations' is a NoneType, not a list", "fix the export"),
        ({k: v for k, v in GOOD_COCO.items() if k != "categories"}, "missing top-level key 'categories'", "needs 'images'"),
        (broken(images=[{"id": 1}]), "images[0] has no 'file_name'", "every entry of 'images' needs id, file_name"),
        (broken(annotations=[{"id": 1, "image_id": 1}]), "annotations[0] has no 'category_id'", "needs image_id, category_id"),
        (broken(images=GOOD_COCO["images"] + [{"id": 2, "file_name": "c.jpg"}]), "duplicate image ids 2", "remove the repeated"),
        (broken(categories=GOOD_COCO["categories"] * 2), "duplicate category ids 1, 2", "its own id"),
        (broken(annotations=GOOD_COCO["annotations"] + [{"image_id": 99, "category_id": 1}]),
         "annotations point at image ids not listed in 'images': 99", "annotation file that belongs to these images"),
        (broken(annotations=GOOD_COCO["annotations"] + [{"image_id": 1, "category_id": 7}]),
         "annotations use category ids not listed in 'categories': 7", "add the categories"),
    ],
)  # fmt: skip
def test_bad_coco_files(tmp_path, doc, problem, fix):
    path = write_coco(tmp_path, doc)
    with pytest.raises(InputFileError) as err:
        load_coco(path, "s", "val")
    assert err.value.path == path
    assert problem in err.value.problem
    assert fix in err.value.fix
    assert str(err.value).startswith(f"{path}: ")


def test_missing_coco_file(tmp_path):
    with pytest.raises(InputFileError, match="COCO annotation file does not exist"):
        load_coco(tmp_path / "nope.json", "s", "val")


def test_missing_images_when_required(tmp_path):
    path = write_coco(tmp_path, GOOD_COCO)
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"")
    with pytest.raises(InputFileError) as err:
        load_coco(path, "s", "val", images_dir=images, require_images=True)
    assert err.value.path == images
    assert err.value.problem == "1 of 2 images listed in instances.json are missing: 'b.jpg'"
    with pytest.raises(InputFileError, match="no image folder was given"):
        load_coco(path, "s", "val", require_images=True)
    assert load_coco(path, "s", "val", images_dir=images).row_counts()["images"] == 2  # not required: no check


# --- OpenImages -------------------------------------------------------------------------------

HEADER = "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
ROW = "00000000000000aa,xclick,/m/b,1,0.1,0.2,0.1,0.2,0,0,{g},0,0"
HIERARCHY = {"LabelName": "/m/root", "Subcategory": [{"LabelName": "/m/a", "Subcategory": [{"LabelName": "/m/b"}, {"LabelName": "/m/c"}]}]}


@pytest.fixture
def oi(tmp_path):
    (tmp_path / "boxes.csv").write_text("\n".join([HEADER, ROW.format(g=0), ROW.format(g=1)]) + "\n")
    (tmp_path / "classes.csv").write_text("/m/a,Animal\n/m/b,Bird\n/m/c,Cat\n")
    (tmp_path / "hierarchy.json").write_text(json.dumps(HIERARCHY))
    return tmp_path


def load(folder, **kw):
    return load_openimages(folder / "boxes.csv", folder / "classes.csv", folder / "hierarchy.json", "oi", "train", **kw)


def test_good_openimages_loads(oi):
    index = load(oi)
    assert index.instance_counts.to_pylist() == [
        {"source": "oi", "split": "train", "image_id": "00000000000000aa", "category_id": "/m/b", "count": 2, "crowd": True}
    ]
    assert {(c["name"], c["parent"]) for c in index.categories.to_pylist()} == {("Animal", None), ("Bird", "Animal"), ("Cat", "Animal")}


def test_wrong_box_header(oi):
    (oi / "boxes.csv").write_text("ImageID,Label,Confidence\n00aa,/m/b,1\n")
    with pytest.raises(InputFileError) as err:
        load(oi)
    assert err.value.path == oi / "boxes.csv"
    assert err.value.problem.startswith("header lacks Source, LabelName, XMin")
    assert err.value.fix.endswith(HEADER)


def test_malformed_box_row(oi):
    with open(oi / "boxes.csv", "a") as f:
        f.write("00000000000000bb,xclick,/m/b,1,0.1,0.2,0.1,0.2,0,0,notanumber,0,0\n")
    with pytest.raises(InputFileError) as err:
        load(oi)
    assert err.value.problem.startswith("cannot be read as an OpenImages box CSV: Conversion Error")
    assert "download it again" in err.value.fix


def test_box_label_missing_from_descriptions(oi):
    with open(oi / "boxes.csv", "a") as f:
        f.write(ROW.replace("/m/b", "/m/zz").format(g=0) + "\n")
    with pytest.raises(InputFileError) as err:
        load(oi)
    assert err.value.path == oi / "boxes.csv"
    assert err.value.problem == "uses labels missing from classes.csv: '/m/zz'"


def test_hierarchy_naming_unknown_labels(oi):
    tree = json.loads(json.dumps(HIERARCHY))
    tree["Subcategory"][0]["Subcategory"].append({"LabelName": "/m/unknown"})
    (oi / "hierarchy.json").write_text(json.dumps(tree))
    with pytest.raises(InputFileError) as err:
        load(oi)
    assert err.value.path == oi / "hierarchy.json"
    assert err.value.problem == "names 1 labels that the class descriptions do not: '/m/unknown'"
    assert "same OpenImages release" in err.value.fix


def test_malformed_hierarchy_and_descriptions(oi):
    (oi / "hierarchy.json").write_text('{"LabelName": "/m/root", "Subcategory": [')
    with pytest.raises(InputFileError, match="hierarchy.json: is not valid JSON"):
        load(oi)
    (oi / "hierarchy.json").write_text(json.dumps(HIERARCHY))
    (oi / "classes.csv").write_text("/m/a,Animal\n/m/b\n")
    with pytest.raises(InputFileError, match="line 2 has 1 fields, expected 2"):
        load(oi)
    (oi / "classes.csv").write_text("/m/a,Animal\n/m/a,Again\n")
    with pytest.raises(InputFileError, match="label '/m/a' is described twice"):
        load(oi)


def test_openimages_missing_images_when_required(oi):
    images = oi / "images"
    images.mkdir()
    with pytest.raises(InputFileError) as err:
        load(oi, images_dir=images, require_images=True)
    assert err.value.problem == "1 of 1 images named in boxes.csv are missing: '00000000000000aa.jpg'"
    shutil.copy(__file__, images / "00000000000000aa.jpg")  # exists, but not an image: PIL must say so
    with pytest.raises(InputFileError) as err:
        load(oi, images_dir=images, require_images=True)
    assert err.value.path == images / "00000000000000aa.jpg"
    assert err.value.problem.startswith("is not a readable image (cannot identify image file")
