"""What `mimic fiftyone` reads and joins, without FiftyOne: sample records, ground truth, clear errors.

The FiftyOne side (grouped dataset, the App) is in test_fiftyone.py, which skips without the extra.
`small_pipeline` is shared with it: a shapes world, its annotation index and the counting eval set,
made through Dagster once per test session, plus hand-made predictions of checkpoint `handmade`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mimic_pipeline.cli import main
from mimic_pipeline.core import catalog
from mimic_pipeline.core.evaluation import score_predictions
from mimic_pipeline.core.fiftyone_view import (
    FiftyOneMissing, browse_set, coco_annotation_files, dataset_name, import_fiftyone, relative_box,
)  # fmt: skip
from mimic_pipeline.defs import annotations as A
from mimic_pipeline.defs import datasets as D
from mimic_pipeline.defs.build import build_definitions
from mimic_pipeline.defs.resources import AnnotationSources

from .test_dagster_datasets import run

CHECKPOINT = "handmade"


def small_pipeline(tmp_path_factory) -> tuple[Path, set[str]]:
    """(data dir, ids of the items answered wrongly in variant pool1), built once per session.

    Predictions: variant pool1 answers every item correctly except two `spread` items and one
    `n_images` item (a wrong answer outside the spread study); variant pool4 answers all correctly.
    """
    data = tmp_path_factory.getbasetemp() / "fiftyone-data"
    wrong_file = data / "wrong.json"
    if wrong_file.exists():
        return data, set(json.loads(wrong_file.read_text()))
    defs = build_definitions(data_dir=str(data), sources=AnnotationSources())
    instance = dg.DagsterInstance.ephemeral()
    assert run(defs, instance, A.shapes_world, config={"n_eval_images": 300, "n_train_images": 100, "seed": 4}).success
    assert run(defs, instance, A.annotation_index, "shapes").success
    assert run(defs, instance, D.eval_items, "counting", {"items_per_cell": 3}).success

    items = pq.read_table(data / "datasets" / "eval" / "counting.parquet")
    rows = items.to_pylist()
    spread = [r["item_id"] for r in rows if r["axis"] == "spread"]
    other = [r["item_id"] for r in rows if r["axis"] == "n_images"]
    wrong = {spread[0], spread[4], other[0]}
    answers = [f"There are {int(r['answer']) + 1}." if r["item_id"] in wrong else f"{r['answer']}" for r in rows]
    pool1 = score_predictions(items, answers, CHECKPOINT, "pool1")
    pool4 = score_predictions(items, [r["answer"] for r in rows], CHECKPOINT, "pool4")
    assert sorted(r["item_id"] for r in pool1.to_pylist() if not r["correct"]) == sorted(wrong)
    out = data / "predictions" / CHECKPOINT
    out.mkdir(parents=True)
    pq.write_table(pa.concat_tables([pool1, pool4]), out / "counting.parquet")
    wrong_file.write_text(json.dumps(sorted(wrong)))
    return data, wrong


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return small_pipeline(tmp_path_factory)


def index_counts(data: Path) -> dict[str, Counter]:
    """image_id -> Counter(category name -> instance count), from the catalogue the index wrote."""
    _, rows = catalog.query(catalog.catalog_path(data), "select i.image_id, c.name, i.count from instance_counts i "
                            "join categories c using (source, category_id) where i.source = 'shapes' and i.split = 'eval'")  # fmt: skip
    out: dict[str, Counter] = {}
    for image_id, name, count in rows:
        out.setdefault(image_id, Counter())[name] += count
    return out


def test_records_are_one_per_item_image_in_order_with_the_index_counts(small):
    data, _ = small
    spec = browse_set(data, "counting")
    items = pq.read_table(data / "datasets" / "eval" / "counting.parquet").to_pylist()
    assert spec.name == "mimic-counting" and spec.n_items == len(items)
    assert len(spec.records) == sum(len(it["image_ids"]) for it in items)
    assert spec.slices == [f"image_{k}" for k in range(1, max(len(it["image_ids"]) for it in items) + 1)]
    by_item: dict[str, list[dict]] = {}
    for r in spec.records:
        by_item.setdefault(r["item_id"], []).append(r)
    counts = index_counts(data)
    for it in items:
        recs = by_item[it["item_id"]]
        assert [r["position"] for r in recs] == list(range(1, len(it["image_ids"]) + 1))
        assert [r["slice"] for r in recs] == [f"image_{k}" for k in range(1, len(recs) + 1)]
        assert [r["filepath"] for r in recs] == it["image_paths"] and all(Path(r["filepath"]).is_file() for r in recs)
        assert [r["image_id"] for r in recs] == it["image_ids"]
        for r in recs:
            assert (r["question"], r["answer"], r["axis"], r["spread"]) == (it["question"], it["answer"], it["axis"], it["spread"])
            assert Counter(label for label, _, _ in r["gt"].boxes) == counts.get(r["image_id"], Counter())
    assert "correct" not in spec.fields and spec.notes == []


def test_the_annotation_file_is_the_one_the_index_stage_read(small):
    data, _ = small
    (path,) = coco_annotation_files(data, "shapes")
    assert path.samefile(data / "sources" / "shapes" / "eval" / "instances_eval.json")  # recorded in annotation_builds
    coco = json.loads(path.read_text())
    spec = browse_set(data, "counting")
    record = next(r for r in spec.records if r["gt"].boxes)
    image = next(i for i in coco["images"] if str(i["id"]) == record["image_id"])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    expected = sorted((names[a["category_id"]], [float(v) for v in a["bbox"]], bool(a["iscrowd"]))
                      for a in coco["annotations"] if a["image_id"] == image["id"])  # fmt: skip
    assert sorted(record["gt"].boxes) == expected
    assert (record["gt"].width, record["gt"].height) == (image["width"], image["height"])
    assert relative_box([8, 4, 16, 8], 32, 32) == [0.25, 0.125, 0.5, 0.25]


def test_with_a_checkpoint_every_record_carries_its_answer(small):
    data, wrong = small
    spec = browse_set(data, "counting", CHECKPOINT)
    assert spec.variant == "pool1" and spec.name == dataset_name("counting", CHECKPOINT, "pool1") == "mimic-counting-handmade-pool1"
    assert {r["item_id"] for r in spec.records if r["correct"] is False} == wrong
    assert all(r["checkpoint"] == CHECKPOINT and r["variant"] == "pool1" and r["prediction"] is not None for r in spec.records)
    assert {r["item_id"] for r in browse_set(data, "counting", CHECKPOINT, "pool4").records if not r["correct"]} == set()


def test_errors_name_the_file_and_the_fix(small, tmp_path, capsys):
    data, _ = small
    assert main(["fiftyone", "--task", "listing", "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "datasets/eval/listing.parquet: no eval set for task 'listing' (eval sets here: counting)" in err
    assert "materialize eval_items for partition 'listing'" in err

    assert main(["fiftyone", "--task", "counting", "--checkpoint", "ghost", "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "predictions/ghost/counting.parquet: no predictions of checkpoint 'ghost' for task 'counting' " \
           "(checkpoints with counting predictions: handmade)" in err  # fmt: skip
    assert "materialize predictions for partition ghost|counting" in err

    assert main(["fiftyone", "--task", "counting", "--checkpoint", CHECKPOINT, "--variant", "pool8",
                 "--data-dir", str(data)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "has no predictions of variant 'pool8' (it has: pool1, pool4)" in err and "use --variant with one of pool1, pool4" in err

    assert main(["fiftyone", "--task", "counting", "--variant", "pool1", "--data-dir", str(data)]) == 2
    assert "give --checkpoint too" in capsys.readouterr().err

    assert main(["fiftyone", "--task", "counting", "--data-dir", str(tmp_path / "empty")]) == 2
    assert "no eval set for task 'counting'" in capsys.readouterr().err


def test_without_fiftyone_the_error_says_how_to_install_it(small, monkeypatch, capsys):
    data, _ = small
    monkeypatch.setitem(sys.modules, "fiftyone", None)  # `import fiftyone` now fails as if not installed
    with pytest.raises(FiftyOneMissing, match=r"pip install -e '\.\[fiftyone\]'"):
        import_fiftyone()
    assert main(["fiftyone", "--task", "counting", "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mimic fiftyone: FiftyOne is not installed: pip install -e '.[fiftyone]'")
    assert "then run the command again" in err
