"""The shapes world renderer: taxonomy, per-image invariants, file formats, determinism."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from mimic_pipeline.core.shapes_world import (
    DEFAULT_COLORS,
    OPENIMAGES_BOX_HEADER,
    SHAPE_DRAWERS,
    ShapesWorldConfig,
    build_shapes_world,
    render_image,
)

from .conftest import TINY


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_taxonomy_has_enough_parents_and_children():
    cfg = ShapesWorldConfig()
    cats = cfg.categories()
    parents = {}
    for _, name, parent in cats:
        parents.setdefault(parent, []).append(name)
    assert len(cats) >= 12
    assert len(parents) >= 3 and all(len(children) >= 3 for children in parents.values())
    assert set(DEFAULT_COLORS) == set(SHAPE_DRAWERS) == {name for _, name, _ in cats}
    assert len(set(DEFAULT_COLORS.values())) == len(DEFAULT_COLORS), "each category has its own colour"


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    cfg = ShapesWorldConfig(seed=3, n_eval_images=25, n_train_images=40)
    a = build_shapes_world(cfg, tmp_path / "a", workers=1)
    b = build_shapes_world(cfg, tmp_path / "b", workers=2)  # worker count must not matter
    assert tree_digest(a.files.root) == tree_digest(b.files.root)
    c = build_shapes_world(ShapesWorldConfig(seed=4, n_eval_images=25, n_train_images=40), tmp_path / "c", workers=1)
    assert tree_digest(a.files.root) != tree_digest(c.files.root)


def test_every_image_respects_the_invariants(tiny_world):
    cfg = TINY
    cell = cfg.image_size // cfg.grid
    for records, folder in ((tiny_world.eval_images, tiny_world.files.coco_images),
                            (tiny_world.train_images, tiny_world.files.openimages_images)):  # fmt: skip
        for rec in records:
            pixels = np.asarray(Image.open(folder / rec.file_name).convert("RGB"))
            assert pixels.shape == (cfg.image_size, cfg.image_size, 3)
            assert len(rec.objects) <= cfg.max_objects
            assert len({o.category for o in rec.objects}) <= cfg.max_categories_per_image
            cells = set()
            for obj in rec.objects:
                x, y, w, h = obj.bbox
                assert w > 0 and h > 0 and 0 <= x and 0 <= y and x + w <= cfg.image_size and y + h <= cfg.image_size
                cells.add((x // cell, y // cell))
                assert (x + w - 1) // cell == x // cell and (y + h - 1) // cell == y // cell, "object leaves its cell"
                # what the annotation says was drawn: the category's colour fills `area` pixels inside the box
                patch = pixels[y : y + h, x : x + w]
                painted = np.all(patch == np.array(DEFAULT_COLORS[obj.category], dtype=np.uint8), axis=-1)
                assert painted.sum() == obj.area > 0
            assert len(cells) == len(rec.objects), "two objects share a cell (overlap)"


def test_crowd_group_objects_occur(tiny_world):
    crowd = [o for r in tiny_world.eval_images + tiny_world.train_images for o in r.objects if o.crowd]
    assert len(crowd) >= 3
    assert tiny_world.manifest["counts"]["eval"]["crowd_objects"] == sum(o.crowd for r in tiny_world.eval_images for o in r.objects)


def test_eval_split_is_a_real_coco_file(tiny_world):
    coco = COCO(str(tiny_world.files.coco_annotations))
    assert len(coco.getImgIds()) == TINY.n_eval_images
    assert sorted(c["supercategory"] for c in coco.loadCats(coco.getCatIds())).count("polygon") == 4
    for rec in tiny_world.eval_images:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[int(rec.image_id)]))
        assert [tuple(a["bbox"]) for a in anns] == [o.bbox for o in rec.objects]
        assert [bool(a["iscrowd"]) for a in anns] == [o.crowd for o in rec.objects]
        assert all(coco.annToMask(a).sum() == a["bbox"][2] * a["bbox"][3] for a in anns)


def test_train_split_is_in_openimages_format(tiny_world):
    with open(tiny_world.files.openimages_boxes, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == OPENIMAGES_BOX_HEADER
    assert len(rows) - 1 == sum(len(r.objects) for r in tiny_world.train_images)
    assert all(0.0 <= float(v) <= 1.0 for row in rows[1:] for v in row[4:8])
    assert all(len(row[0]) == 16 and int(row[0], 16) >= 0 for row in rows[1:])
    with open(tiny_world.files.openimages_classes, newline="") as f:
        classes = list(csv.reader(f))
    assert classes[0][0].startswith("/m/") and len(classes) == 12 + 3  # no header row, children and parents
    tree = json.loads(tiny_world.files.openimages_hierarchy.read_text())
    assert tree["LabelName"] == "/m/0bl9f"
    assert [len(p["Subcategory"]) for p in tree["Subcategory"]] == [4, 4, 4]


def test_render_is_a_pure_function_of_config_split_and_index():
    img1, rec1 = render_image(TINY, "train", 5)
    img2, rec2 = render_image(TINY, "train", 5)
    assert rec1 == rec2 and img1.tobytes() == img2.tobytes()
    assert render_image(TINY, "eval", 5)[1] != rec1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 16, "grid": 4}, "4px cells"),
        ({"max_objects": 17}, "max_objects must be between 0 and grid\\*grid = 16"),
        ({"color_mode": "pastel"}, "color_mode must be"),
        ({"taxonomy": {"blobs": ["blob", "circle"]}}, "no drawing for shapes \\['blob'\\]"),
    ],
)
def test_bad_config_is_rejected_with_the_reason(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        build_shapes_world(ShapesWorldConfig(**kwargs), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_failed_rebuild_keeps_the_previous_world(tmp_path, monkeypatch):
    cfg = ShapesWorldConfig(seed=1, n_eval_images=10, n_train_images=10)
    good = build_shapes_world(cfg, tmp_path / "w", workers=1)
    before = tree_digest(good.files.root)

    import mimic_pipeline.core.shapes_world as sw

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(sw, "write_openimages_files", boom)
    with pytest.raises(OSError, match="disk full"):
        build_shapes_world(ShapesWorldConfig(seed=2, n_eval_images=10, n_train_images=10), tmp_path / "w", workers=1)
    assert tree_digest(tmp_path / "w") == before
    assert [p.name for p in tmp_path.iterdir()] == ["w"], "no temporary folder is left behind"
