"""The committed Kubernetes deployment (deploy/, docs/deployment.md) is valid and consistent.

No cluster here: what is checked is that Dagster (and dagster-k8s, from the test extra) accept
every key of the instance file, that the Kubernetes objects in it and in the training pod are
well-formed for the Kubernetes client, that the Helm values say the same as the instance file,
and that the cluster Definitions load with the GPU training client swapped in.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from mimic_pipeline.defs.training import TRAINING_RUN_TAG

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _yaml_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _config_map() -> dict[str, str]:
    return next(d for d in _yaml_documents(DEPLOY / "k8s" / "data-volume.yaml") if d["kind"] == "ConfigMap")["data"]


def _pvc_name() -> str:
    return next(d for d in _yaml_documents(DEPLOY / "k8s" / "data-volume.yaml") if d["kind"] == "PersistentVolumeClaim")["metadata"]["name"]


def test_the_instance_file_passes_dagsters_instance_schema(tmp_path):
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(DEPLOY))
    assert config["concurrency"]["pools"]["default_limit"] == 1  # the duckdb pool: one writer
    assert "postgres" in config["storage"] and config["run_launcher"]["class"] == "K8sRunLauncher"
    # the check bites: a misspelt key is refused
    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text().replace("max_concurrent_runs", "max_concurent_runs"))
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


def test_the_run_launcher_config_is_one_dagster_k8s_accepts():
    pytest.importorskip("dagster_k8s", reason="dagster-k8s comes with the test extra")
    import kubernetes
    from dagster._config import validate_config
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.models import k8s_snake_case_dict

    launcher = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]
    assert importlib.import_module(launcher["module"]).__dict__[launcher["class"]] is K8sRunLauncher
    result = validate_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, result.errors
    bad = validate_config(K8sRunLauncher.config_type(), {**launcher["config"], "volume_mount": []})
    assert not bad.success
    config = launcher["config"]
    for volume in config["volumes"]:  # unknown Kubernetes fields raise here
        k8s_snake_case_dict(kubernetes.client.V1Volume, volume)
    for mount in config["volume_mounts"]:
        k8s_snake_case_dict(kubernetes.client.V1VolumeMount, mount)
    k8s_snake_case_dict(kubernetes.client.V1Container, config["run_k8s_config"]["container_config"])


def _snake(limits: list[dict]) -> list[dict]:
    out = []
    for limit in limits:
        value = limit.get("value")
        if isinstance(value, dict):
            value = {"applyLimitPerUniqueValue": value["applyLimitPerUniqueValue"]}
        out.append({"key": limit["key"], "value": value, "limit": limit["limit"]})
    return out


def test_the_helm_values_say_what_the_instance_file_says():
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    runs, helm_runs = instance["concurrency"]["runs"], values["concurrency"]["runs"]
    assert values["concurrency"]["enabled"] is True
    assert helm_runs["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert _snake(helm_runs["tagConcurrencyLimits"]) == _snake(runs["tag_concurrency_limits"])
    assert values["concurrency"]["pools"]["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"] == 1
    # the training job's run tag is the one the queue limits
    [(key, value)] = TRAINING_RUN_TAG.items()
    assert {"key": key, "value": value, "limit": 2} in runs["tag_concurrency_limits"]
    # one data volume everywhere, mounted where MIMIC_DATA_DIR says
    env, claim = _config_map(), _pvc_name()
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    [code] = values["dagster-user-deployments"]["deployments"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    for spec in (launcher, code, values["dagsterWebserver"]):
        assert [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]] == [claim]
        assert [m["mountPath"] for m in spec["volumeMounts"]] == [env["MIMIC_DATA_DIR"]]
    assert [v["persistent_volume_claim"]["claim_name"] for v in instance["run_launcher"]["config"]["volumes"]] == [claim]
    assert env["MIMIC_DATA_CLAIM"] == claim
    assert instance["run_launcher"]["config"]["env_config_maps"] == [m["name"] for m in launcher["envConfigMaps"]]
    # the code server loads the cluster Definitions
    assert code["dagsterApiGrpcArgs"] == ["-m", "mimic_pipeline.definitions_k8s"]
    assert (ROOT / "mimic_pipeline" / "definitions_k8s.py").exists()


def test_the_gpu_training_client_runs_the_job_on_gpu_nodes_with_the_data_volume(monkeypatch):
    pytest.importorskip("dagster_k8s", reason="dagster-k8s comes with the test extra")
    from dagster_k8s import PipesK8sClient
    from dagster_k8s.pipes import build_pod_body

    from mimic_pipeline.defs.k8s import training_pipes_from_env

    env = _config_map()
    client = training_pipes_from_env(env)
    pod = build_pod_body("mimic-train", client.image, ["python", "-m", "accelerate.commands.launch"], {"A": "1"},
                         None, client.pod_spec(processes=4))  # fmt: skip
    [container] = pod.spec.containers
    assert container.image == env["MIMIC_TRAINING_IMAGE"] and container.command[0] == "python"
    assert container.resources.limits == {"nvidia.com/gpu": "4"} == container.resources.requests
    assert {m.mount_path for m in container.volume_mounts} == {env["MIMIC_DATA_DIR"], "/dev/shm"}
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == _pvc_name()
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"} and pod.spec.restart_policy == "Never"
    assert pod.spec.tolerations[0].key == "nvidia.com/gpu"
    # the asset calls it like any Pipes client; the image, namespace and GPUs come from the client
    calls = []
    monkeypatch.setattr(PipesK8sClient, "run", lambda self, **kw: calls.append(kw) or "invocation")
    assert client.run(context="ctx", command=["x"], extras={"processes": 2}, env={"PYTHONPATH": "/app"}) == "invocation"
    [call] = calls
    assert call["image"] == env["MIMIC_TRAINING_IMAGE"] and call["namespace"] == env["MIMIC_TRAINING_NAMESPACE"]
    assert call["base_pod_spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert call["command"] == ["x"] and call["env"] == {"PYTHONPATH": "/app"} and call["extras"] == {"processes": 2}


def test_the_cluster_definitions_load_with_the_gpu_training_client(monkeypatch):
    pytest.importorskip("dagster_k8s", reason="dagster-k8s comes with the test extra")
    for key, value in _config_map().items():
        monkeypatch.setenv(key, value)
    module = importlib.import_module("mimic_pipeline.definitions_k8s")
    module = importlib.reload(module)  # read the environment set above
    from mimic_pipeline.defs.k8s import GpuTrainingPipes

    repo = module.defs.get_repository_def()
    assert isinstance(module.defs.resources["training_pipes"], GpuTrainingPipes)
    assert repo.has_job("train_checkpoints") and repo.get_job("train_checkpoints").tags == TRAINING_RUN_TAG
    monkeypatch.delenv("MIMIC_TRAINING_IMAGE")
    with pytest.raises(RuntimeError, match="MIMIC_TRAINING_IMAGE is not set"):
        importlib.reload(module)
