"""The DuckDB catalogue: per-source replacement in one transaction, read-only queries, check SQL."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb
import pyarrow as pa
import pytest

from mimic_pipeline.core import catalog
from mimic_pipeline.core.annotations import AnnotationIndex


def make_index(source: str, n_images: int, count: int = 1) -> AnnotationIndex:
    ids = [str(i) for i in range(n_images)]
    return AnnotationIndex(
        source,
        pa.table({"source": [source], "category_id": ["1"], "name": ["cat"], "parent": ["animal"], "is_thing": [True]}),
        pa.table({"source": [source] * n_images, "split": ["val"] * n_images, "image_id": ids,
                  "file_name": [f"{i}.jpg" for i in ids], "width": [10] * n_images, "height": [10] * n_images}),
        pa.table({"source": [source] * n_images, "split": ["val"] * n_images, "image_id": ids,
                  "category_id": ["1"] * n_images, "count": [count] * n_images, "crowd": [False] * n_images}),
        {"coco_annotations": f"/data/{source}.json"},
    )  # fmt: skip


def rows(db, sql):
    return catalog.query(db, sql)[1]


def test_replace_keeps_other_sources_and_records_the_build(tmp_path):
    db = tmp_path / "mimic.duckdb"
    assert catalog.replace_source_index(db, make_index("a", 3)) == {"categories": 1, "images": 3, "instance_counts": 3}
    catalog.replace_source_index(db, make_index("b", 2))
    catalog.replace_source_index(db, make_index("a", 5))
    assert rows(db, "select source, count(*) from images group by 1 order by 1") == [("a", 5), ("b", 2)]
    assert rows(db, "select source, n_images from annotation_builds order by built_at") == [("a", 3), ("b", 2), ("a", 5)]


def test_a_failure_mid_replacement_leaves_the_previous_rows(tmp_path):
    db = tmp_path / "mimic.duckdb"
    catalog.replace_source_index(db, make_index("a", 3))
    bad = make_index("a", 4)
    # a NULL in a NOT NULL column makes the third insert fail after two tables were already replaced
    bad.instance_counts = bad.instance_counts.set_column(4, "count", pa.array([None] * 4, pa.int32()))
    with pytest.raises(duckdb.ConstraintException):
        catalog.replace_source_index(db, bad)
    assert rows(db, "select count(*) from images where source = 'a'") == [(3,)]
    assert rows(db, "select count(*) from instance_counts where source = 'a'") == [(3,)]
    assert rows(db, "select count(*) from annotation_builds") == [(1,)]


def test_queries_are_read_only_and_errors_are_clear(tmp_path):
    db = tmp_path / "mimic.duckdb"
    with pytest.raises(catalog.CatalogError, match="no catalogue at .*run `mimic demo`"):
        catalog.query(db, "select 1")
    catalog.replace_source_index(db, make_index("a", 1))
    with pytest.raises(catalog.CatalogError, match="read-only mode"):
        catalog.query(db, "delete from images")
    with pytest.raises(catalog.CatalogError, match="Table with name nope does not exist"):
        catalog.query(db, "select * from nope")
    assert rows(db, "select count(*) from images") == [(1,)]


def test_check_queries_find_each_violation(tmp_path):
    db = tmp_path / "mimic.duckdb"
    catalog.replace_source_index(db, make_index("a", 2))
    checks = catalog.named_queries("annotation_checks")
    assert set(checks) == {"orphan_annotations", "unknown_categories", "non_positive_counts"}
    assert all(rows_ == [] for rows_ in (catalog.query(db, q, {"source": "a"})[1] for q in checks.values()))
    with duckdb.connect(str(db)) as con:
        con.execute("insert into instance_counts values ('a', 'val', 'ghost', '1', 1, false)")
        con.execute("insert into instance_counts values ('a', 'val', '0', '42', 2, false)")
        con.execute("insert into instance_counts values ('a', 'val', '1', '1', 0, false)")
        con.execute("insert into instance_counts values ('b', 'val', 'ghost', '9', 0, false)")  # other source: ignored
    found = {name: catalog.query(db, q, {"source": "a"})[1] for name, q in checks.items()}
    assert found == {
        "orphan_annotations": [("val", "ghost", "1")],
        "unknown_categories": [("42",)],
        "non_positive_counts": [("val", "1", "1", 0)],
    }


def test_parquet_export_round_trips(tmp_path):
    import pyarrow.parquet as pq

    index = make_index("a", 4, count=3)
    paths = catalog.export_index_parquet(index, tmp_path / "index" / "a")
    assert set(paths) == {"categories", "images", "instance_counts"}
    assert pq.read_table(paths["instance_counts"]).equals(index.instance_counts)
    assert sorted(p.name for p in (tmp_path / "index" / "a").iterdir()) == ["categories.parquet", "images.parquet", "instance_counts.parquet"]


HOLD_WRITER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("insert into images values ('a', 'val', 'held', 'x.png', 1, 1)")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def hold_writer(db, seconds: float) -> subprocess.Popen:
    """Another process (a concurrent run) holding a read-write connection for `seconds`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_WRITER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_readers_and_writers_wait_for_another_process_lock_then_proceed(tmp_path):
    db = tmp_path / "mimic.duckdb"
    catalog.replace_source_index(db, make_index("a", 1))
    proc = hold_writer(db, 1.5)
    started = time.monotonic()
    assert catalog.query(db, "select count(*) from images", wait_s=30)[1] == [(2,)]  # saw the holder's row
    assert time.monotonic() - started >= 1.0  # it waited for the lock rather than failing
    proc.wait()
    proc = hold_writer(db, 1.5)
    catalog.replace_rows(db, "images", {"image_id": "held"}, pa.table({"source": ["a"], "split": ["val"], "image_id": ["held"],
                         "file_name": ["y.png"], "width": [2], "height": [2]}), wait_s=30)  # fmt: skip
    proc.wait()
    assert rows(db, "select file_name from images where image_id = 'held'") == [("y.png",)]


def test_a_lock_held_longer_than_the_wait_fails_with_the_fix(tmp_path):
    db = tmp_path / "mimic.duckdb"
    catalog.replace_source_index(db, make_index("a", 1))
    proc = hold_writer(db, 3)
    try:
        with pytest.raises(catalog.CatalogError, match="cannot open .*mimic.duckdb read-only .*Conflicting lock.*another "
                           "process holds it: wait for the running materialization"):  # fmt: skip
            catalog.query(db, "select 1", wait_s=0.3)
        with pytest.raises(catalog.CatalogError, match="cannot open .*mimic.duckdb for writing"):
            catalog.connect_writer(db, wait_s=0.3)
    finally:
        proc.wait()
