"""MIMIC: diagnose and fix multi-image failures of vision-language models.

`mimic_pipeline.core` is plain Python (no Dagster); `mimic_pipeline.defs` is the Dagster layer;
`mimic_pipeline.definitions` holds the Definitions object the webserver and daemon load.
"""

__version__ = "0.1.0"
