"""Assemble the Definitions: every asset, check and resource of the pipeline."""

from __future__ import annotations

import os

import dagster as dg

from . import annotations, attention, datasets, evaluation, training
from .resources import DEFAULT_DATA_DIR, AnnotationSources, MimicPaths


def build_definitions(data_dir: str | None = None, sources: AnnotationSources | None = None,
                      training_pipes: dg.PipesClient | None = None) -> dg.Definitions:  # fmt: skip
    """Definitions with resources read from the environment unless given (tests pass their own).

    `training_pipes` runs the training assets configured with `launcher: pipes`: a local subprocess
    by default; on a cluster a `PipesK8sClient` that starts the job as a pod on a GPU node
    (mimic_pipeline/definitions_k8s.py, docs/deployment.md).
    """
    return dg.Definitions(
        assets=[annotations.shapes_world, annotations.annotation_index,
                datasets.eval_items, datasets.train_items, datasets.single_image_items, datasets.baseline_scores,
                *training.TRAINING_ASSETS, training.checkpoints, evaluation.predictions, evaluation.eval_metrics,
                evaluation.evaluation_report, attention.attention_stats],
        jobs=[training.training_job],
        sensors=[evaluation.checkpoint_sensor],
        schedules=[evaluation.refresh_reports],
        resources={
            "paths": MimicPaths(data_dir=data_dir or os.environ.get("MIMIC_DATA_DIR", DEFAULT_DATA_DIR)),
            "sources": sources or AnnotationSources.from_env(),
            "training_pipes": training_pipes or dg.PipesSubprocessClient(),
        },
    )
