"""`mimic ui` starts the real Dagster webserver and daemon: the asset graph is served, the daemon is
healthy, the checkpoint sensor is running; then the test stops the whole process group."""

from __future__ import annotations

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


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]


@pytest.mark.slow
def test_mimic_ui_serves_the_asset_graph_with_a_running_daemon(tmp_path):
    port = free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "MIMIC_DATA_DIR": str(tmp_path / "data")}
    log = open(tmp_path / "ui.log", "w")
    # its own session: the test can stop the webserver, the daemon and the code server together
    proc = subprocess.Popen([sys.executable, "-m", "mimic_pipeline.cli", "ui", "--port", str(port)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        data = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "ui.log").read_text()[-3000:]
            try:
                data = graphql(port, QUERY)
                statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
                if data["assetNodes"] and all(s["healthy"] for s in statuses if s["required"]):
                    break
            except (OSError, KeyError, TypeError, ValueError):
                pass
            time.sleep(1.0)
        assert data and data["assetNodes"], "the webserver did not serve the asset graph in time"
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
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert proc.returncode is not None
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
