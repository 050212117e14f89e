"""The cluster variant of the training launcher: the job as a pod on a GPU node, through dagster-k8s.

`PipesK8sClient.run` takes the image, namespace and pod spec per call, while the training asset
calls every Pipes client the same way (`run(context=, command=, extras=, env=)`, as
`PipesSubprocessClient` does). `GpuTrainingPipes` is that client with the cluster's settings bound:
the training image, the shared data volume mounted where the run pods have it, GPU nodes, and
as many GPUs as the job has processes (`extras["processes"]`). Needs the `k8s` extra
(`pip install -e ".[k8s]"`); docs/deployment.md has the whole set-up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from dagster_k8s import PipesK8sClient

GPU_RESOURCE = "nvidia.com/gpu"


class GpuTrainingPipes(PipesK8sClient):
    """A `PipesK8sClient` that runs every training job in `image` on a GPU node, one GPU per process."""

    def __init__(self, image: str, namespace: str | None = None, data_claim: str = "mimic-data", data_dir: str = "/data",
                 node_selector: Mapping[str, str] | None = None, tolerations: Sequence[Mapping[str, Any]] = (),
                 gpu_resource: str = GPU_RESOURCE, **client_kwargs):  # fmt: skip
        super().__init__(**client_kwargs)
        self.image, self.namespace, self.data_claim, self.data_dir = image, namespace, data_claim, data_dir
        self.node_selector, self.tolerations, self.gpu_resource = dict(node_selector or {}), list(tolerations), gpu_resource

    def pod_spec(self, processes: int) -> dict:
        """The job's pod: the data volume at the run pods' path, `processes` GPUs, and a /dev/shm that NCCL can use."""
        gpus = {self.gpu_resource: str(processes)}
        return {
            "containers": [{
                "resources": {"limits": gpus, "requests": gpus},
                "volumeMounts": [{"name": "data", "mountPath": self.data_dir}, {"name": "dshm", "mountPath": "/dev/shm"}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": self.data_claim}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
            "nodeSelector": self.node_selector, "tolerations": self.tolerations, "restartPolicy": "Never",
        }  # fmt: skip

    def run(self, *, context, command, extras: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
            **kwargs):  # fmt: skip
        processes = int((extras or {}).get("processes", 1))
        return super().run(context=context, command=command, extras=extras, env=env, image=self.image,
                           namespace=self.namespace, base_pod_spec=self.pod_spec(processes), **kwargs)  # fmt: skip


def training_pipes_from_env(env: Mapping[str, str] = os.environ) -> GpuTrainingPipes:
    """The client as the deployment's environment describes it (deploy/helm/values.yaml sets these)."""
    try:
        image = env["MIMIC_TRAINING_IMAGE"]
    except KeyError:
        raise RuntimeError("MIMIC_TRAINING_IMAGE is not set: the image the training pods run (see docs/deployment.md)") from None
    return GpuTrainingPipes(
        image=image, namespace=env.get("MIMIC_TRAINING_NAMESPACE") or None,
        data_claim=env.get("MIMIC_DATA_CLAIM", "mimic-data"), data_dir=env.get("MIMIC_DATA_DIR", "/data"),
        node_selector=json.loads(env.get("MIMIC_GPU_NODE_SELECTOR") or "{}"),
        tolerations=json.loads(env.get("MIMIC_GPU_TOLERATIONS") or "[]"),
    )  # fmt: skip
