"""Predictions in atomic parts: a killed evaluation resumes, never redoes an item, never loses one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mimic_pipeline.core.prediction import predict_items, predicted_ids, read_parts

from .conftest import REPO


def items(n: int) -> pa.Table:
    """Counting items whose right answer is their index modulo 5."""
    return pa.table({
        "item_id": [f"it{i:04d}" for i in range(n)], "task": ["counting"] * n, "axis": ["spread"] * n,
        "axis_value": ["1-1-1-1"] * n, "answer": [str(i % 5) for i in range(n)],
        "answer_struct": [json.dumps({"total": i % 5}) for i in range(n)], "query": [["star"]] * n,
    })  # fmt: skip


def oracle(batch: pa.Table) -> list[str]:
    return [f"There are {a}." for a in batch.column("answer").to_pylist()]


def test_every_item_is_answered_once_and_scored(tmp_path):
    table, answered = predict_items(oracle, items(50), tmp_path, "oracle", "pool1", batch_size=8, part_size=16)
    assert answered == 50 and table.num_rows == 50
    assert sorted(table.column("item_id").to_pylist()) == items(50).column("item_id").to_pylist()
    assert all(table.column("correct").to_pylist()) and set(table.column("variant").to_pylist()) == {"pool1"}
    assert len(list(tmp_path.glob("part-*.parquet"))) == 4  # 16 + 16 + 16 + 2


def test_a_second_run_answers_nothing_again(tmp_path):
    predict_items(oracle, items(30), tmp_path, "oracle", "pool1", part_size=10)
    calls = []
    table, answered = predict_items(lambda b: calls.append(b.num_rows) or oracle(b), items(30), tmp_path, "oracle", "pool1")
    assert answered == 0 and calls == [] and table.num_rows == 30


def test_a_changed_item_set_discards_the_old_answers(tmp_path):
    predict_items(oracle, items(20), tmp_path, "oracle", "pool1", part_size=10, items_version="v1")
    wrong = lambda b: ["0"] * b.num_rows  # noqa: E731
    table, answered = predict_items(wrong, items(20), tmp_path, "oracle", "pool1", part_size=10, items_version="v2")
    assert answered == 20 and table.column("raw_answer").to_pylist() == ["0"] * 20


def test_a_wrong_number_of_answers_is_an_error_and_writes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="3 answers for a batch of 4 items"):
        predict_items(lambda b: ["1", "2", "3"], items(4), tmp_path, "broken", "pool1", batch_size=4)
    assert predicted_ids(tmp_path) == set()


KILLED_RUN = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.test_prediction import items, oracle
from mimic_pipeline.core.prediction import predict_items

def slow(batch):
    time.sleep(0.3)
    return oracle(batch)

predict_items(slow, items(120), {folder!r}, "oracle", "pool1", batch_size=10, part_size=20)
"""


@pytest.mark.slow
def test_an_evaluation_killed_mid_way_resumes_where_it_stopped(tmp_path):
    folder = tmp_path / "preds"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN.format(repo=str(REPO), folder=str(folder))], cwd=REPO)
    deadline = time.monotonic() + 120
    while len(list(folder.glob("part-*.parquet"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the evaluation ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-way, possibly while a part is being written
    proc.wait()
    before = predicted_ids(folder)
    assert 40 <= len(before) < 120  # whole parts only
    for stray in folder.glob(".part-*"):  # an interrupted write leaves a temporary name, never a part
        assert not stray.name.endswith(".parquet") or ".tmp-" in stray.name

    calls = []

    def counting(batch):
        calls.extend(batch.column("item_id").to_pylist())
        return oracle(batch)

    table, answered = predict_items(counting, items(120), folder, "oracle", "pool1", batch_size=10, part_size=20)
    assert answered == 120 - len(before) and not set(calls) & before  # nothing redone
    ids = table.column("item_id").to_pylist()
    assert len(ids) == len(set(ids)) == 120  # nothing lost, nothing twice
    assert all(table.column("correct").to_pylist())
    assert read_parts(folder).num_rows == 120
    assert all(pq.read_table(p).num_rows > 0 for p in folder.glob("part-*.parquet"))
