"""The `mimic` command line, run as a user runs it (subprocesses, a real DAGSTER_HOME)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest

from .conftest import REPO

# 2 steps per recipe, 1 item per cell and variant: the wiring, not the learning
QUICK_TRAINING = ["--train-scale", "0.001", "--heldout-items", "8", "--eval-items-per-cell", "1"]


def mimic(*args, env=None, check=True):
    result = subprocess.run([sys.executable, "-m", "mimic_pipeline.cli", *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, cwd=REPO, timeout=600)  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"mimic {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.mark.slow
def test_demo_materializes_everything_through_dagster_and_query_answers(tmp_path):
    home = tmp_path / "dagster_home"
    data = tmp_path / "data"
    out = mimic("demo", "--data-dir", str(data), "--eval-images", "300", "--train-images", "400", "--items-per-cell", "4",
                "--train-set-items", "120", "--single-image-items", "200", *QUICK_TRAINING, env={"DAGSTER_HOME": str(home)})  # fmt: skip
    assert "[1/57] materializing shapes_world" in out.stdout and "[2/57] materializing annotation_index[shapes]" in out.stdout
    assert "materializing predictions[lora_masked|odd_one]" in out.stdout and "materializing attention_stats[base]" in out.stdout
    assert "materializing baseline_scores[odd_one]" in out.stdout and "materializing checkpoints ..." in out.stdout
    assert "materializing evaluation_report ..." in out.stdout
    assert out.stdout.index("materializing base_checkpoint") < out.stdout.index("materializing lora_masked_checkpoint")
    assert f"Catalogue:     {data / 'mimic.duckdb'}" in out.stdout

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 57 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert all(r.tags.get("mimic/demo") == "true" for r in runs)

    q = mimic("query", "select split, count(*) as n from images group by 1 order by 1", "--data-dir", str(data), "--format", "json")
    got = {r["split"]: r["n"] for r in json.loads(q.stdout)}
    assert got["eval"] == 300 and 0 < got["train"] <= 400

    q = mimic("query", "select checkpoint, round(min(value), 4) as worst from eval_metrics where metric = 'accuracy' "
              "group by 1 order by 1", "--data-dir", str(data), "--format", "json")  # fmt: skip
    worst = {r["checkpoint"]: r["worst"] for r in json.loads(q.stdout)}
    assert set(worst) == {"oracle", "majority", "random", "base", "full_ft", "lora", "lora_masked"}
    assert worst["oracle"] == 1.0
    counts = mimic("query", "select count(*) from eval_items", "--data-dir", str(data), "--format", "csv").stdout
    assert int(counts.splitlines()[1]) == 4 * (24 + 15 + 6 + 5)  # items per cell x cells of the four tasks
    train = mimic("query", "select count(*) from train_items", "--data-dir", str(data), "--format", "csv").stdout
    assert int(train.splitlines()[1]) == 120
    single = mimic("query", "select task, count(*) from single_image_items group by 1 order by 1", "--data-dir", str(data), "--format", "csv").stdout
    assert single.splitlines()[1:] == ["counting,100", "listing,40", "presence,60"]

    board = mimic("query", "select checkpoint, variant, tasks from leaderboard where checkpoint = 'lora_masked' order by 2",
                  "--data-dir", str(data), "--format", "csv").stdout  # fmt: skip
    assert board.splitlines()[1:] == ["lora_masked,pixels4,4", "lora_masked,pool1,4", "lora_masked,pool4,4"]
    ckpts = mimic("query", "select name, recipe, parent from checkpoints order by name", "--data-dir", str(data), "--format", "csv").stdout
    assert ckpts.splitlines()[1:] == ["base,base,", "full_ft,full_ft,base", "lora,lora,base", "lora_masked,lora_masked,base"]

    bad = mimic("query", "drop table images", "--data-dir", str(data), check=False)
    assert bad.returncode == 2 and "read-only mode" in bad.stderr
    assert mimic("query", "select count(*) from images", "--data-dir", str(data), "--format", "csv").stdout.splitlines()[1] == str(sum(got.values()))


def test_query_without_a_catalogue_says_how_to_make_one(tmp_path):
    r = mimic("query", "select 1", "--data-dir", str(tmp_path), check=False)
    assert r.returncode == 2
    assert "no catalogue at" in r.stderr and "run `mimic demo`" in r.stderr


def test_generate_writes_the_benchmark_from_annotation_files(tmp_path):
    import pyarrow.parquet as pq

    from mimic_pipeline.core.shapes_world import ShapesWorldConfig, build_shapes_world

    # large enough for every cell (Odd-One over 10 images needs a few hundred images)
    f = build_shapes_world(ShapesWorldConfig(seed=1, n_eval_images=300, n_train_images=300), tmp_path / "world").files
    out = tmp_path / "items"
    r = mimic("generate", "--coco", str(f.coco_annotations), "--images", str(f.coco_images), "--items-per-cell", "2",
              "--openimages-boxes", str(f.openimages_boxes), "--openimages-classes", str(f.openimages_classes),
              "--openimages-hierarchy", str(f.openimages_hierarchy), "--train-items", "100", "--out", str(out))  # fmt: skip
    assert "Answer balance" in r.stdout and f"Items written under {out}" in r.stdout
    eval_counting = pq.read_table(out / "eval" / "counting.parquet")
    assert eval_counting.num_rows == 2 * 24
    assert all(p.startswith(str(f.coco_images)) for paths in eval_counting.column("image_paths").to_pylist() for p in paths)
    assert sum(pq.read_table(out / "train" / f"{t}.parquet").num_rows for t in ("counting", "listing", "common", "odd_one")) == 100
    assert (out / "llava" / "odd_one.json").exists()

    bad = mimic("generate", "--coco", str(tmp_path / "missing.json"), "--out", str(out), check=False)
    assert bad.returncode == 1 and "missing.json: COCO annotation file does not exist" in bad.stderr
    usage = mimic("generate", "--openimages-boxes", "x.csv", "--out", str(out), check=False)
    assert usage.returncode == 2 and "go together" in usage.stderr


@pytest.mark.slow
def test_a_demo_killed_mid_run_does_not_block_the_next_one(tmp_path):
    """SIGKILL leaves the run STARTED and its `duckdb` pool slot claimed; the next demo must free both."""
    import shutil
    import signal
    import time

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")  # the pool limits under test
    data = tmp_path / "data"
    args = ["demo", "--data-dir", str(data), "--eval-images", "300", "--train-images", "400", "--items-per-cell", "4",
            "--single-image-items", "200", *QUICK_TRAINING]
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen([sys.executable, "-m", "mimic_pipeline.cli", *args, "--train-set-items", "30000"],
                                 stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)  # fmt: skip
        deadline = time.monotonic() + 300
        while "materializing train_items[counting]" not in log.read_text():
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        time.sleep(1.0)  # inside the step, holding the pool slot
        first.send_signal(signal.SIGKILL)
        first.wait()

    with dg.DagsterInstance.from_config(str(home)) as instance:
        stuck = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert len(stuck) == 1 and stuck[0].tags["mimic/pid"] == str(first.pid)

    second = subprocess.run([sys.executable, "-m", "mimic_pipeline.cli", *args, "--train-set-items", "120"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"released run {stuck[0].run_id} left behind by a killed process ({first.pid})" in second.stdout
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(stuck[0].run_id).status == dg.DagsterRunStatus.FAILURE
