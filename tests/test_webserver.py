"""`mimic ui` starts the real Dagster webserver and daemon: the asset graph is served, the daemon is
healthy, the checkpoint sensor is running; then the test stops the whole process group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import REPO

QUERY = """
{
  assetNodes { assetKey { path } groupName }
  instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } }
  repositoriesOrError { ... on RepositoryConnection { nodes { sensors { name sensorState { status } } } } }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    assert not answer.get("errors"), answer["errors"]
    return answer["data"]


@contextlib.contextmanager
def mimic_ui(tmp_path, data_dir, dagster_home=None):
    """`mimic ui` in its own session (so the webserver, daemon and code server stop together) until the
    webserver serves the asset graph and every required daemon is healthy; yields (port, first answer).
    On exit: SIGTERM to the process group, and the test fails if anything outlives it or the port stays open."""
    port = free_port()
    home = dagster_home or tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "MIMIC_DATA_DIR": str(data_dir)}
    log_path = tmp_path / "ui.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "mimic_pipeline.cli", "ui", "--port", str(port)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        data = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                data = graphql(port, QUERY)
                statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
                if data["assetNodes"] and all(s["healthy"] for s in statuses if s["required"]):
                    break
            except (OSError, KeyError, TypeError, ValueError):
                pass
            time.sleep(1.0)
        assert data and data["assetNodes"], "the webserver did not serve the asset graph in time"
        yield port, data
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    deadline = time.monotonic() + 60  # the daemon, code server and webserver leave with it
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("processes of `mimic ui` outlived SIGTERM by a minute")
    with pytest.raises(OSError):  # nothing is left listening on the port
        urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=3)


@pytest.mark.slow
def test_mimic_ui_serves_the_asset_graph_with_a_running_daemon(tmp_path):
    with mimic_ui(tmp_path, tmp_path / "data") as (port, data):
        groups = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in data["assetNodes"]}
        assert groups["annotation_index"] == "annotations" and groups["eval_items"] == "datasets"
        assert groups["lora_masked_checkpoint"] == "training" and groups["predictions"] == "evaluation"
        daemons = {s["daemonType"]: s["healthy"] for s in data["instance"]["daemonHealth"]["allDaemonStatuses"] if s["required"]}
        assert daemons.get("SENSOR") and daemons.get("ASSET"), daemons  # sensors and declarative automation run
        sensors = {s["name"]: s["sensorState"]["status"]
                   for repo in data["repositoriesOrError"]["nodes"] for s in repo["sensors"]}  # fmt: skip
        assert sensors["checkpoint_sensor"] == "RUNNING"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/assets", timeout=10) as page:
            assert page.status == 200


LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}
"""
BACKFILL = """
query ($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status numPartitions } } }
"""
BACKFILL_RUNS = """
query ($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status startTime endTime tags { key value } } }
  }
}
"""
RUN_LOGS = """
query ($runId: ID!) {
  logsForRun(runId: $runId) { ... on EventConnection { events { __typename ... on MessageEvent { message } } } }
}
"""


@pytest.mark.slow
def test_a_backfill_of_every_checkpoint_and_task_runs_in_parallel_with_no_duckdb_lock_error(tmp_path):
    """The real daemon runs a backfill of predictions + eval_metrics over every checkpoint x task: two runs
    at a time, each with the multiprocess executor, all reading the catalogue and writing eval_metrics."""
    import dagster as dg

    from mimic_pipeline.core import catalog

    from .test_dagster_datasets import shapes_eval_sets
    from .test_dagster_evaluation import TASKS, copy_in

    data = tmp_path / "data"
    shapes_eval_sets(data, items_per_cell=2)
    names = ["ckpt_a", "ckpt_b"]
    for name in names:
        copy_in(data / "checkpoints" / name)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    # registered before the daemon's first tick: on_missing() leaves partitions that already exist to the user
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("checkpoint", names)

    with mimic_ui(tmp_path, data, home) as (port, _):
        params = {"assetSelection": [{"path": ["predictions"]}, {"path": ["eval_metrics"]}], "allPartitions": True,
                  "runConfigData": {"ops": {"predictions": {"config": {"max_new_tokens": 4}}}}}  # fmt: skip
        launched = graphql(port, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            backfill = graphql(port, BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
            if backfill["status"] not in ("REQUESTED", "CANCELING", "FAILING"):
                break
            time.sleep(3)
        runs = graphql(port, BACKFILL_RUNS, {"id": backfill_id})["runsOrError"]["results"]
        logs = {r["runId"]: [e.get("message") or "" for e in graphql(port, RUN_LOGS, {"runId": r["runId"]})["logsForRun"]["events"]]
                for r in runs}  # fmt: skip

    failures = {r["runId"]: [m for m in logs[r["runId"]] if "rror" in m][:3] for r in runs if r["status"] != "SUCCESS"}
    assert backfill["status"] == "COMPLETED_SUCCESS" and not failures, (backfill, failures)
    partitions = sorted(t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition")
    assert partitions == sorted(f"{name}|{task}" for name in names for task in TASKS)  # one run per partition
    spans = sorted((r["startTime"], r["endTime"]) for r in runs)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), "no two runs overlapped"
    for messages in logs.values():
        assert any("multiprocess executor" in m for m in messages)  # steps ran in their own processes
        assert not any("Conflicting lock" in m or "cannot open" in m for m in messages)
    cells = catalog.query(data / "mimic.duckdb", "select distinct checkpoint, task from eval_metrics order by all")[1]
    assert cells == sorted((name, task) for name in names for task in TASKS)
    per_variant = catalog.query(data / "mimic.duckdb", "select checkpoint, variant, count(*) = count(distinct item_id || task) "
                                "from predictions group by all order by all")[1]  # fmt: skip
    assert per_variant == [(name, v, True) for name in names for v in ("pixels4", "pool1", "pool4")]
