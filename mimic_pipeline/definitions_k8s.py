"""The Definitions a Kubernetes deployment loads (`dagster api grpc -m mimic_pipeline.definitions_k8s`).

The same assets as `mimic_pipeline.definitions`; training assets configured with `launcher: pipes`
start their `accelerate launch` job as a pod on a GPU node (mimic_pipeline/defs/k8s.py) instead of
a local subprocess. Needs the `k8s` extra; see docs/deployment.md.
"""

from mimic_pipeline.defs.build import build_definitions
from mimic_pipeline.defs.k8s import training_pipes_from_env

defs = build_definitions(training_pipes=training_pipes_from_env())
