"""The Dagster layer: thin assets over `mimic_pipeline.core`, one module per pipeline stage."""
