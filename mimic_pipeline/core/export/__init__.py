"""Exports of the benchmark to other tools' formats (plain Python, no Dagster)."""
