"""Export the MIMIC eval sets as lmms-eval tasks: Parquet with the images embedded, task YAML, utils.py.

The folder it writes is self-contained (`lmms_eval --include_path OUT --tasks mimic`):

    mimic_lmms_eval.json     what was exported, from where, with the files' hashes (also marks the folder as ours)
    data/<task>.parquet      one row per item; `images` is a list of Hugging Face `datasets` Image structs
                             ({bytes, path}: the image files' own bytes, in the item's order)
    mimic_<task>.yaml        one lmms-eval task per MIMIC task
    _mimic.yaml              the group `mimic`: all four tasks, averaged into the MIMIC average
    utils.py                 doc_to_visual / doc_to_text / process_results / aggregations (`lmms_eval_utils.py`)
    mimic_scoring/           verbatim copies of core/scoring.py and core/text.py: scoring identical to ours

`datasets` (the `lmms-eval` extra) is needed only to build the Parquet schema with its feature metadata.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .. import scoring, text
from ..catalog import catalog_path
from ..errors import InputFileError
from ..evaluation import source_vocabulary
from ..files import atomic_dir, file_sha256
from ..sampling.items import ITEM_SCHEMA
from . import lmms_eval_utils

TASKS = tuple(lmms_eval_utils.METRICS)
GROUP = "mimic"
MANIFEST = "mimic_lmms_eval.json"
EXPORT_FORMAT = 1
DEFAULT_MAX_NEW_TOKENS = 64  # greedy; four COCO names in a subword tokenizer stay well under it
BATCH_ROWS = 64  # items per Parquet row group: bounds memory when real images are large

# item columns the export leaves out: local file paths mean nothing on another machine (the images are embedded)
DROPPED = ("image_paths",)
RENAMED = {"answer": "gt"}
FIRST = ("item_id", "task", "images", "question", "gt")


@dataclass(frozen=True)
class ExportedTask:
    task: str
    items: int
    images: int
    parquet: Path
    yaml: Path


@dataclass(frozen=True)
class LmmsEvalExport:
    out: Path
    tasks: list[ExportedTask]
    vocabulary: str  # where scoring's category vocabulary came from, or why there is none


def eval_set_path(data_dir: str | Path, task: str) -> Path:
    return Path(data_dir) / "datasets" / "eval" / f"{task}.parquet"


def features():
    """The Hugging Face features of an exported row: the item's columns plus `images` and `vocabulary`."""
    try:
        import datasets
    except ImportError:
        raise RuntimeError("the lmms-eval export needs the `datasets` package: pip install -e '.[lmms-eval]'") from None
    item = datasets.Features.from_arrow_schema(pa.schema([f for f in ITEM_SCHEMA if f.name not in DROPPED]))
    columns = {RENAMED.get(name, name): feature for name, feature in item.items()}
    columns |= {"images": datasets.List(datasets.Image()), "vocabulary": datasets.List(datasets.Value("string"))}
    return datasets.Features({name: columns[name] for name in (*FIRST, *(c for c in columns if c not in FIRST))})


def _read_eval_set(data_dir: Path, task: str) -> pa.Table:
    path = eval_set_path(data_dir, task)
    if not path.is_file():
        raise InputFileError(path, f"the {task} eval set does not exist",
                             f"materialize eval_items[{task}] (Dagster UI, or `mimic demo` for the shapes world), "
                             "or give the data folder that holds it with --data-dir / $MIMIC_DATA_DIR")  # fmt: skip
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise InputFileError(path, f"is not readable Parquet ({e})", f"materialize eval_items[{task}] again") from None
    missing = [f.name for f in ITEM_SCHEMA if f.name not in table.column_names]
    if missing:
        raise InputFileError(path, f"is not a MIMIC item set: columns {', '.join(missing)} are missing",
                             f"materialize eval_items[{task}] again with this version of mimic_pipeline")  # fmt: skip
    table = table.select(ITEM_SCHEMA.names).cast(ITEM_SCHEMA)
    wrong = sorted(set(table.column("task").to_pylist()) - {task})
    if wrong:
        raise InputFileError(path, f"holds items of task {wrong[0]!r}, not {task!r}", f"materialize eval_items[{task}] again")
    return table


def _check_images(path: Path, table: pa.Table) -> int:
    """Every image file of every item exists; the number of image references."""
    n = 0
    for item_id, paths in zip(table.column("item_id").to_pylist(), table.column("image_paths").to_pylist()):
        for image in paths:
            if not Path(image).is_file():
                raise InputFileError(image, f"image of item {item_id} (eval set {path}) does not exist",
                                     "restore the images folder, or re-materialize shapes_world / the annotation "
                                     "source and eval_items so the items point at images that exist")  # fmt: skip
        n += len(paths)
    return n


def _check_out(out: Path) -> None:
    """`out` is new, empty, or an earlier export: the export replaces the whole folder."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise InputFileError(out, "exists and is not an lmms-eval export of MIMIC (no mimic_lmms_eval.json); "
                             "the export replaces its folder whole", "give a new or empty folder to --out")  # fmt: skip


def _rows(table: pa.Table, vocabulary: list[str]) -> dict[str, list]:
    """Export columns of a slice of items, with every image file's bytes embedded."""
    cols = {RENAMED.get(name, name): table.column(name).to_pylist() for name in table.column_names if name not in DROPPED}
    cols["images"] = [[{"bytes": Path(p).read_bytes(), "path": Path(p).name} for p in paths]
                      for paths in table.column("image_paths").to_pylist()]  # fmt: skip
    cols["vocabulary"] = [vocabulary] * table.num_rows
    return cols


def _write_parquet(table: pa.Table, vocabulary: list[str], path: Path, progress: Callable[[int], None]) -> None:
    schema = features().arrow_schema  # carries the `huggingface` feature metadata that load_dataset reads
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, table.num_rows, BATCH_ROWS):
            batch = table.slice(start, BATCH_ROWS)
            writer.write_table(pa.Table.from_pydict(_rows(batch, vocabulary), schema=schema))
            progress(batch.num_rows)


def _q(value) -> str:
    """A YAML scalar (JSON strings and numbers are YAML)."""
    return json.dumps(value)


def task_yaml(task: str, parquet: Path, max_new_tokens: int, generator_version: str) -> str:
    metrics = "".join(f"  - metric: {m}\n    aggregation: !function utils.{lmms_eval_utils.AGGREGATIONS[m].__name__}\n"
                      "    higher_is_better: true\n" for m in lmms_eval_utils.METRICS[task])  # fmt: skip
    return f"""# MIMIC {task}, written by `mimic export lmms-eval`. Scores are in percent, each the mean over the
# task's studies as on the MIMIC leaderboard; scoring is mimic_pipeline's own (mimic_scoring/).
task: {GROUP}_{task}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {_q(str(parquet))}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.mimic_doc_to_visual
doc_to_text: !function utils.mimic_doc_to_text
doc_to_target: !function utils.mimic_doc_to_target
process_results: !function utils.mimic_process_results
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: ""
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  top_p: 1.0
  num_beams: 1
  do_sample: false
metric_list:
{metrics}metadata:
  version: {EXPORT_FORMAT}.0
  generator_version: {_q(generator_version)}
"""


def group_yaml(tasks: list[str]) -> str:
    listed = "".join(f"  - {GROUP}_{t}\n" for t in tasks)
    return f"""# All MIMIC tasks; mimic_score averaged over them, unweighted, is the leaderboard's MIMIC average.
group: {GROUP}
task:
{listed}aggregate_metric_list:
  - metric: mimic_score
    aggregation: mean
    weight_by_size: false
metadata:
  version: {EXPORT_FORMAT}.0
"""


def vendored_sources() -> dict[str, str]:
    """The scoring package an export carries: our modules' source, unchanged."""
    return {
        "mimic_scoring/__init__.py": '"""Verbatim copies of mimic_pipeline/core/scoring.py and text.py (see utils.py)."""\n',
        "mimic_scoring/scoring.py": inspect.getsource(scoring),
        "mimic_scoring/text.py": inspect.getsource(text),
        "utils.py": inspect.getsource(lmms_eval_utils),
    }


def export_lmms_eval(
    data_dir: str | Path, out: str | Path, tasks: list[str] | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: Callable[[str, int, int], None] | None = None,
) -> LmmsEvalExport:  # fmt: skip
    """Write the eval sets of `data_dir` as lmms-eval tasks into `out`, atomically (all or nothing).

    Every input is checked before anything is written: the eval sets exist and are item sets, every image
    file exists. `progress(task, done, total)` is called as items are written.
    """
    data_dir, out = Path(data_dir).resolve(), Path(out).resolve()
    tasks = list(tasks or TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; MIMIC tasks are {', '.join(TASKS)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    features()  # fail before any work when `datasets` is missing
    _check_out(out)
    tables = {task: _read_eval_set(data_dir, task) for task in tasks}
    n_images = {task: _check_images(eval_set_path(data_dir, task), table) for task, table in tables.items()}
    catalog = catalog_path(data_dir)
    vocabularies = {task: source_vocabulary(catalog, table) for task, table in tables.items()}
    vocabulary_note = (f"category names of the items' source from {catalog}" if all(vocabularies.values()) else
                       f"none for some tasks (no catalogue at {catalog}, or its source has no categories there): "
                       "as in the pipeline's own evaluation, an answer naming a second category is then not marked wrong")  # fmt: skip

    exported, manifest_tasks = [], {}
    with atomic_dir(out) as tmp:
        for relative, source in vendored_sources().items():
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp / relative).write_text(source)
        (tmp / "data").mkdir()
        for task, table in tables.items():
            done = 0

            def step(n: int, task=task, total=table.num_rows) -> None:
                nonlocal done
                done += n
                if progress:
                    progress(task, done, total)

            parquet = Path("data") / f"{task}.parquet"
            _write_parquet(table, vocabularies[task] or [], tmp / parquet, step)
            if progress and table.num_rows == 0:
                progress(task, 0, 0)
            versions = sorted(set(table.column("generator_version").to_pylist()))
            yaml_name = f"{GROUP}_{task}.yaml"
            (tmp / yaml_name).write_text(task_yaml(task, out / parquet, max_new_tokens, ",".join(versions)))
            exported.append(ExportedTask(task, table.num_rows, n_images[task], out / parquet, out / yaml_name))
            manifest_tasks[task] = {
                "items": table.num_rows, "images": n_images[task], "parquet": str(parquet), "yaml": yaml_name,
                "sha256": file_sha256(tmp / parquet), "source_eval_set": str(eval_set_path(data_dir, task)),
                "generator_version": versions, "vocabulary": len(vocabularies[task] or []),
            }  # fmt: skip
        (tmp / f"_{GROUP}.yaml").write_text(group_yaml(tasks))
        manifest = {"format": EXPORT_FORMAT, "group": GROUP, "data_dir": str(data_dir), "tasks": manifest_tasks,
                    "vocabulary": vocabulary_note, "max_new_tokens": max_new_tokens}  # fmt: skip
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return LmmsEvalExport(out, exported, vocabulary_note)
