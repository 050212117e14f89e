"""The documentation's SQL runs: every ```sql block of README.md and docs/*.md (and every
`mimic query "..."` of a bash block) is executed, statement by statement and read-only as `mimic query`
does, against a small catalogue built by the real pipeline. A docs query that a schema change breaks
fails here.

A block that cannot run on the embedded shapes world starts with a line `-- docs-test: skip (reason)`;
the reason is required and shows in the test report.

The catalogue holds every table and view the docs describe: the shapes index, the four eval sets, one
training set, the single-image set, the baselines on every task, and one untrained tiny checkpoint
named `lora_masked` (a masked layer, so attention queries see a zero) with predictions in two variants,
metrics and attention statistics for one task.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from mimic_pipeline.core import catalog
from mimic_pipeline.defs import attention as AT
from mimic_pipeline.defs import datasets as D
from mimic_pipeline.defs import evaluation as E
from mimic_pipeline.defs import training as T

from .test_dagster_datasets import run, shapes_eval_sets
from .test_dagster_evaluation import TASKS, copy_in

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SQL_BLOCK = re.compile(r"^```sql[ \t]*\n(.*?)^```", re.M | re.S)
BASH_BLOCK = re.compile(r"^```(?:bash|sh|shell)[ \t]*\n(.*?)^```", re.M | re.S)
MIMIC_QUERY = re.compile(r"""mimic query (?:--data-dir \S+ )?(?:--format \S+ )?"([^"]+)\"""")
SKIP = re.compile(r"^\s*-- docs-test: skip\b(.*)$", re.M)
CHECKPOINT = "lora_masked"


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def doc_queries() -> list:
    """One pytest param per SQL block and per `mimic query "..."` command, named file:line."""
    params = []
    for path in DOCS:
        text = path.read_text()
        where = path.relative_to(REPO)
        for m in SQL_BLOCK.finditer(text):
            params.append(pytest.param(m.group(1), id=f"{where}:{_line(text, m.start())}"))
        for block in BASH_BLOCK.finditer(text):
            for q in MIMIC_QUERY.finditer(block.group(1)):
                params.append(pytest.param(q.group(1), id=f"{where}:{_line(text, block.start(1) + q.start())}"))
    return params


QUERIES = doc_queries()


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    """Every table and view of the catalogue, with rows, built through the real assets at tiny sizes."""
    data = tmp_path_factory.mktemp("docs-data")
    world = {"n_eval_images": 300, "n_train_images": 400, "seed": 2}
    defs, instance = shapes_eval_sets(data, items_per_cell=2, world=world)
    for task in TASKS:
        assert run(defs, instance, D.baseline_scores, task).success
    assert run(defs, instance, D.train_items, "common", {"total_items": 200}).success
    assert run(defs, instance, D.single_image_items, config={"n_items": 60}).success

    folder = data / "checkpoints" / CHECKPOINT
    copy_in(folder, done=False)  # untrained: the wiring is what matters; its last LM layer masked
    (folder / "mimic_checkpoint.json").write_text(json.dumps({"masked_layers": [1], "mask_mode": "block"}))
    (folder / "DONE").write_text("copied\n")
    assert run(defs, instance, T.checkpoints).success  # the registry row, and the `checkpoint` partition
    key = dg.MultiPartitionKey({"checkpoint": CHECKPOINT, "task": "counting"})
    config = {"variants": ["pool1", "pool4"], "max_new_tokens": 4, "items_per_cell": 1}
    assert run(defs, instance, E.predictions, key, config).success
    assert run(defs, instance, E.eval_metrics, key).success
    assert run(defs, instance, AT.attention_stats, CHECKPOINT, {"n_items": 2, "batch_size": 2}).success
    return data / "mimic.duckdb"


def test_the_docs_have_queries_to_run():
    files = {p.id.split(":")[0] for p in QUERIES}
    assert {"README.md", "docs/duckdb.md"} <= files
    assert len(QUERIES) >= 15  # blocks and commands; a broken pattern would find none


@pytest.mark.parametrize("sql", QUERIES)
def test_docs_query_runs(catalogue, sql):
    skip = SKIP.search(sql)
    if skip:
        reason = skip.group(1).strip(" :()")
        assert reason, "a skipped docs block must say why: -- docs-test: skip (reason)"
        pytest.skip(reason)
    statements = duckdb.connect().extract_statements(sql)
    assert statements, "no SQL statement in the block"
    for statement in statements:
        try:
            catalog.query(catalogue, statement.query)
        except catalog.CatalogError as e:
            pytest.fail(f"docs query fails against the current schema:\n{statement.query.strip()}\n\n{e}")


def test_every_table_and_view_is_documented(catalogue):
    """docs/duckdb.md names every table and view the pipeline creates (a new one needs its section)."""
    _, rows = catalog.query(catalogue, "select table_name from information_schema.tables where table_schema = 'main'")
    names = {r[0] for r in rows}
    assert {"images", "eval_items", "train_items", "single_image_items", "predictions", "eval_metrics", "leaderboard",
            "checkpoints", "attention_stats"} <= names  # the fixture built them all  # fmt: skip
    text = (REPO / "docs" / "duckdb.md").read_text()
    assert not sorted(n for n in names if f"`{n}`" not in text)


def test_links_to_docs_pages_resolve():
    """Every relative link to a Markdown page (README -> docs/, docs -> docs) points at a file that exists.
    Images are not checked: the README's docs/asset-graph.png comes from another branch."""
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.name} links {target}, which does not exist"
