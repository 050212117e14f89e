"""The Definitions object the Dagster webserver and daemon load (see workspace.yaml)."""

from mimic_pipeline.defs.build import build_definitions

defs = build_definitions()
