"""Plain-Python core of the pipeline: everything here is usable and tested without Dagster."""
