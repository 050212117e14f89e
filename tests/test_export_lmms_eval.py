"""`mimic export lmms-eval`: the eval sets as lmms-eval tasks, read back the way lmms-eval reads them
(`datasets.load_dataset("parquet", ...)`, YAML with `!function`, utils.py executed by path), and scored
exactly as the pipeline scores them."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import math
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from mimic_pipeline.core import catalog, scoring, text
from mimic_pipeline.core.baselines import oracle_answers
from mimic_pipeline.core.errors import InputFileError
from mimic_pipeline.core.evaluation import metric_rows, score_predictions, source_vocabulary
from mimic_pipeline.core.export import lmms_eval as X
from mimic_pipeline.core.sampling.pools import sampling_index_from_parquet
from mimic_pipeline.core.shapes_world import DEFAULT_TAXONOMY
from mimic_pipeline.core.text import number_word, pluralize

from .test_cli import mimic
from .test_dagster_datasets import shapes_eval_sets

TASKS = ["counting", "listing", "common", "odd_one"]
CELLS = {"counting": 24, "listing": 15, "common": 6, "odd_one": 5}  # (study, value) cells per task by default


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Shapes world, its index in the catalogue and 2 eval items per cell, through Dagster; exported once."""
    data = tmp_path_factory.mktemp("data")
    shapes_eval_sets(data, items_per_cell=2)
    out = tmp_path_factory.mktemp("export") / "mimic_lmms"
    calls = []
    result = X.export_lmms_eval(data, out, progress=lambda *a: calls.append(a))
    return data, out, result, calls


def items_of(data, task) -> pa.Table:
    return pq.read_table(data / "datasets" / "eval" / f"{task}.parquet")


def load_task_dataset(out, task):
    return datasets.load_dataset("parquet", data_files={"test": str(out / "data" / f"{task}.parquet")}, split="test")


def load_utils(out):
    """utils.py as lmms-eval loads a `!function utils.x`: executed from its path, not imported from a package."""
    spec = importlib.util.spec_from_file_location("utils", out / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Function(str):
    """What `!function utils.name` names."""


class TaskYamlLoader(yaml.SafeLoader):
    pass


TaskYamlLoader.add_constructor("!function", lambda loader, node: Function(loader.construct_scalar(node)))


def load_yaml(path):
    return yaml.load(path.read_text(), Loader=TaskYamlLoader)


def functions_named(config) -> list[str]:
    if isinstance(config, Function):
        return [config]
    if isinstance(config, dict):
        return [f for v in config.values() for f in functions_named(v)]
    if isinstance(config, list):
        return [f for v in config for f in functions_named(v)]
    return []


def test_export_writes_the_layout_with_progress(pipeline):
    data, out, result, calls = pipeline
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert files == ["_mimic.yaml", "data/common.parquet", "data/counting.parquet", "data/listing.parquet",
                     "data/odd_one.parquet", "mimic_common.yaml", "mimic_counting.yaml", "mimic_listing.yaml",
                     "mimic_lmms_eval.json", "mimic_odd_one.yaml", "mimic_scoring/__init__.py",
                     "mimic_scoring/scoring.py", "mimic_scoring/text.py", "utils.py"]  # fmt: skip
    assert [(t.task, t.items) for t in result.tasks] == [(t, 2 * CELLS[t]) for t in TASKS]
    assert [t.images for t in result.tasks] == [sum(items_of(data, t).column("n_images").to_pylist()) for t in TASKS]
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temporary folder left behind
    # progress per task ends at its total
    assert [c for c in calls if c[1] == c[2]] == [(t, 2 * CELLS[t], 2 * CELLS[t]) for t in TASKS]
    manifest = json.loads((out / "mimic_lmms_eval.json").read_text())
    assert manifest["group"] == "mimic" and manifest["data_dir"] == str(data.resolve())
    assert manifest["tasks"]["listing"]["items"] == 30
    assert manifest["tasks"]["listing"]["sha256"] == X.file_sha256(out / "data" / "listing.parquet")
    assert manifest["tasks"]["listing"]["vocabulary"] == 15  # the shapes world's 12 leaves and 3 parents
    assert result.vocabulary.startswith("category names of the items' source from ")


def test_the_scoring_beside_utils_is_our_source_verbatim(pipeline):
    _, out, _, _ = pipeline
    assert (out / "mimic_scoring" / "scoring.py").read_text() == inspect.getsource(scoring)
    assert (out / "mimic_scoring" / "text.py").read_text() == inspect.getsource(text)
    assert (out / "utils.py").read_text() == inspect.getsource(X.lmms_eval_utils)


def test_parquet_loads_with_datasets_with_images_in_item_order(pipeline):
    data, out, _, _ = pipeline
    F = datasets
    expected = F.Features({
        "item_id": F.Value("string"), "task": F.Value("string"), "images": F.List(F.Image()),
        "question": F.Value("string"), "gt": F.Value("string"), "axis": F.Value("string"),
        "axis_value": F.Value("string"), "n_images": F.Value("int32"), "n_distractors": F.Value("int32"),
        "spread": F.Value("string"), "placement": F.Value("string"), "n_concepts": F.Value("int32"),
        "n_subcategories": F.Value("int32"), "query": F.List(F.Value("string")),
        "image_ids": F.List(F.Value("string")), "image_roles": F.List(F.Value("string")),
        "template_id": F.Value("int32"), "answer_struct": F.Value("string"), "source": F.Value("string"),
        "split": F.Value("string"), "seed": F.Value("int64"), "generator_version": F.Value("string"),
        "config_hash": F.Value("string"), "vocabulary": F.List(F.Value("string")),
    })  # fmt: skip
    vocabulary = source_vocabulary(data / "mimic.duckdb", items_of(data, "counting"))
    assert len(vocabulary) == 15 and vocabulary == sorted(vocabulary)
    for task in TASKS:
        ds = load_task_dataset(out, task)
        assert ds.features == expected
        assert list(ds.features) == list(expected)
        source = items_of(data, task).to_pylist()
        assert len(ds) == len(source) == 2 * CELLS[task]
        for doc, item in zip(ds, source):
            assert doc["gt"] == item["answer"] and doc["task"] == task
            for key in ("item_id", "question", "axis", "axis_value", "n_images", "spread", "query", "image_ids",
                        "image_roles", "answer_struct", "seed", "generator_version", "config_hash"):  # fmt: skip
                assert doc[key] == item[key], key
            assert doc["vocabulary"] == vocabulary
            assert len(doc["images"]) == len(item["image_paths"]) == item["n_images"]
            for decoded, path in zip(doc["images"], item["image_paths"]):
                with Image.open(path) as original:
                    assert decoded.mode == original.mode and decoded.size == original.size
                    assert np.array_equal(np.asarray(decoded), np.asarray(original))
    # the Image struct holds the file's own bytes: nothing re-encoded
    raw = pq.read_table(out / "data" / "odd_one.parquet", columns=["images"]).column("images")[0].as_py()
    first = items_of(data, "odd_one").column("image_paths")[0].as_py()
    assert [(i["bytes"], i["path"]) for i in raw] == [(Path(p).read_bytes(), Path(p).name) for p in first]


def test_task_yaml_names_functions_that_exist_and_metrics_that_process_results_returns(pipeline):
    data, out, _, _ = pipeline
    utils = load_utils(out)
    group = load_yaml(out / "_mimic.yaml")
    assert group == {"group": "mimic", "task": [f"mimic_{t}" for t in TASKS],
                     "aggregate_metric_list": [{"metric": "mimic_score", "aggregation": "mean", "weight_by_size": False}],
                     "metadata": {"version": 1.0}}  # fmt: skip
    metrics = {"counting": ["mimic_score", "accuracy"], "listing": ["mimic_score", "mean_item_f1", "exact_set_accuracy"],
               "common": ["mimic_score", "accuracy"], "odd_one": ["mimic_score", "accuracy"]}  # fmt: skip
    for task in TASKS:
        config = load_yaml(out / f"mimic_{task}.yaml")
        assert config["task"] == f"mimic_{task}"
        assert config["dataset_path"] == "parquet" and config["test_split"] == "test"
        assert config["dataset_kwargs"] == {"data_files": {"test": str(out / "data" / f"{task}.parquet")}}
        assert config["output_type"] == "generate_until"
        assert config["generation_kwargs"] == {"max_new_tokens": 64, "temperature": 0, "top_p": 1.0, "num_beams": 1,
                                               "do_sample": False}  # fmt: skip
        assert [m["metric"] for m in config["metric_list"]] == metrics[task]
        assert all(m["higher_is_better"] is True for m in config["metric_list"])
        named = functions_named(config)
        assert {"utils.mimic_doc_to_visual", "utils.mimic_doc_to_text", "utils.mimic_doc_to_target",
                "utils.mimic_process_results"} <= set(named)  # fmt: skip
        for name in named:
            module, function = name.split(".")
            assert module == "utils" and callable(getattr(utils, function)), name
        doc = load_task_dataset(out, task)[0]
        assert sorted(utils.mimic_process_results(doc, [doc["gt"]])) == sorted(metrics[task])
        assert utils.mimic_doc_to_text(doc, {"pre_prompt": "", "post_prompt": ""}) == doc["question"]
        assert utils.mimic_doc_to_target(doc) == doc["gt"]
        visuals = utils.mimic_doc_to_visual(doc)
        assert len(visuals) == doc["n_images"] and all(v.mode == "RGB" for v in visuals)


def aggregated(utils, task, records) -> dict[str, float]:
    """Each metric of the task through the aggregation function its YAML names."""
    return {m: utils.AGGREGATIONS[m]([r[m] for r in records]) for m in utils.METRICS[task]}


def test_oracle_answers_score_exactly_100_on_every_task(pipeline):
    data, out, _, _ = pipeline
    utils = load_utils(out)
    for task in TASKS:
        items = items_of(data, task)
        source, split = items.column("source")[0].as_py(), items.column("split")[0].as_py()
        index = sampling_index_from_parquet(data / "index" / source, source, split)
        ds = load_task_dataset(out, task)
        answers = oracle_answers(items, index, seed=3)
        assert answers != ds["gt"]  # phrased freely ("There are 4.", "The triangles."), not the stored string
        records = [utils.mimic_process_results(doc, [answer]) for doc, answer in zip(ds, answers)]
        assert aggregated(utils, task, records) == {m: 100.0 for m in utils.METRICS[task]}


def answer_variants(task, gt, vocabulary) -> list[str]:
    """Right, wrong and awkward answers: number words, "There are 4.", plurals, lists with "and", empty."""
    if task == "counting":
        n = int(gt)
        return [gt, f"There are {n}.", number_word(n).capitalize() + ".", str(n + 1), "", "4.5 or so", "none"]
    if task == "listing":
        names = gt.split(", ")
        other = next(leaf for leaves in DEFAULT_TAXONOMY.values() for leaf in leaves if leaf not in names)
        return [gt, " and ".join(names), ", ".join(pluralize(n) for n in names), f"{gt} and {other}",
                names[0], "", "I don't know"]  # fmt: skip
    other = next(v for v in vocabulary if v != gt)
    return [gt, f"The {pluralize(gt)}.", f"It is the {gt.upper()}!", other, f"{gt} or {other}", "", f"{gt}s-ish things"]


def test_utils_score_and_aggregate_exactly_as_the_pipeline_and_leaderboard(pipeline, tmp_path):
    data, out, _, _ = pipeline
    utils = load_utils(out)
    vocabulary = source_vocabulary(data / "mimic.duckdb", items_of(data, "counting"))
    fields = [f.name for f in dataclasses.fields(scoring.ItemScore)]
    db = tmp_path / "scores.duckdb"
    ours = {}
    for task in TASKS:
        items = items_of(data, task)
        ds = load_task_dataset(out, task)
        answers = [answer_variants(task, gt, vocabulary)[k % 7] for k, gt in enumerate(items.column("answer").to_pylist())]
        records = [utils.mimic_process_results(doc, [a]) for doc, a in zip(ds, answers)]
        # per item: every field of the pipeline's ItemScore, for every metric record
        for record, item, answer in zip(records, items.to_pylist(), answers):
            expected = dataclasses.asdict(scoring.score_answer(task, answer, item, vocabulary))
            for r in record.values():
                assert {k: r[k] for k in fields} == expected and r["prediction"] == answer
        assert 0 < sum(r["mimic_score"]["correct"] for r in records) < len(records)  # right and wrong both occur
        # aggregated: the mean over studies of the pipeline's per-study metric (eval_metrics, axis_value 'all')
        rows = [r for r in metric_rows(score_predictions(items, answers, "probe", vocabulary=vocabulary))
                if r["axis_value"] == "all"]  # fmt: skip
        per_study = lambda metric: [r["value"] for r in sorted(rows, key=lambda r: r["axis"]) if r["metric"] == metric]  # noqa: E731
        study = {"accuracy": per_study("accuracy")}
        if task == "listing":
            study |= {"mean_item_f1": per_study("mean_item_f1"), "exact_set_accuracy": per_study("accuracy")}
        study["mimic_score"] = study["mean_item_f1" if task == "listing" else "accuracy"]
        got = aggregated(utils, task, records)
        assert got == {m: 100 * sum(study[m]) / len(study[m]) for m in utils.METRICS[task]}
        ours[task] = got["mimic_score"]
        catalog.replace_rows(db, "eval_metrics", {"checkpoint": "probe", "task": task},
                             pa.Table.from_pylist(metric_rows(score_predictions(items, answers, "probe", vocabulary=vocabulary))))  # fmt: skip
    # the leaderboard view (sql/evaluation.sql) shows the same numbers, rounded to 0.1
    cols, rows = catalog.query(db, "select * from leaderboard")
    board = dict(zip(cols, rows[0]))
    assert {t: board[t] for t in TASKS} == {t: round(ours[t], 1) for t in TASKS}
    assert board["mimic_average"] == round(sum(ours.values()) / 4, 1)


def doc(task, gt, answer_struct, axis, query=(), vocabulary=()):
    return {"item_id": f"{task}-{axis}-{gt}", "task": task, "axis": axis, "gt": gt, "answer_struct": answer_struct,
            "query": list(query), "vocabulary": list(vocabulary)}  # fmt: skip


def test_utils_scores_known_answers_with_exact_values(pipeline):
    _, out, _, _ = pipeline
    utils = load_utils(out)
    count = doc("counting", "4", '{"counts":[1,3]}', "spread")
    assert utils.score_item(count, "There are four.").score == 1.0
    assert utils.score_item(count, "4.5").parse_ok is False
    assert utils.score_item(count, "").parsed is None
    listing = doc("listing", "circle, ring", '{"categories":["circle","ring"]}', "n_images", ["round"])
    s = utils.score_item(listing, "circles and squares")
    assert (s.precision, s.recall, s.score, s.correct) == (0.5, 0.5, 0.5, False)
    assert utils.score_item(listing, "Rings and circles.").correct is True
    common = doc("common", "car", "{}", "n_images", vocabulary=["car", "carrot"])
    assert utils.score_item(common, "carrot").correct is False
    assert utils.score_item(common, "The cars.").correct is True
    # two studies: 1 of 2 right and 1 of 1 right -> the study mean is 75, not the item mean 66.7
    records = [utils.mimic_process_results(doc("counting", "4", "{}", axis), [answer])
               for axis, answer in (("spread", "4"), ("spread", "5"), ("distractors", "four"))]  # fmt: skip
    assert aggregated(utils, "counting", records) == {"mimic_score": 75.0, "accuracy": 75.0}
    assert math.isnan(utils.mimic_aggregate_score([]))


def copy_eval_set(data, target, task, change=None):
    """A data folder holding one eval set, optionally with rows changed."""
    table = items_of(data, task)
    if change:
        table = pa.Table.from_pylist([change(r) for r in table.to_pylist()], schema=table.schema)
    (target / "datasets" / "eval").mkdir(parents=True)
    pq.write_table(table, target / "datasets" / "eval" / f"{task}.parquet")
    return target


def test_bad_input_stops_before_writing_with_the_file_and_fix(pipeline, tmp_path):
    data, _, _, _ = pipeline
    empty = tmp_path / "empty"
    with pytest.raises(InputFileError) as e:
        X.export_lmms_eval(empty, tmp_path / "out")
    missing = empty.resolve() / "datasets" / "eval" / "counting.parquet"
    assert str(e.value) == (f"{missing}: the counting eval set does not exist\n  fix: materialize eval_items[counting] "
                            "(Dagster UI, or `mimic demo` for the shapes world), or give the data folder that holds it "
                            "with --data-dir / $MIMIC_DATA_DIR")  # fmt: skip
    assert not (tmp_path / "out").exists()

    gone = str(tmp_path / "nowhere" / "img.png")
    moved = copy_eval_set(data, tmp_path / "moved", "common", lambda r: {**r, "image_paths": [*r["image_paths"][:-1], gone]})
    with pytest.raises(InputFileError) as e:
        X.export_lmms_eval(moved, tmp_path / "out", tasks=["common"])
    first = items_of(data, "common").column("item_id")[0].as_py()
    assert str(e.value).startswith(f"{gone}: image of item {first} (eval set {moved.resolve()}/datasets/eval/common.parquet) "
                                   "does not exist\n  fix: restore the images folder")  # fmt: skip
    assert not (tmp_path / "out").exists()

    with pytest.raises(ValueError, match="unknown task 'presence'; MIMIC tasks are counting, listing, common, odd_one"):
        X.export_lmms_eval(data, tmp_path / "out", tasks=["presence"])

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(InputFileError, match="exists and is not an lmms-eval export of MIMIC"):
        X.export_lmms_eval(data, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_failed_export_leaves_the_previous_one_whole(pipeline, tmp_path, monkeypatch):
    data, _, _, _ = pipeline
    out = tmp_path / "out"
    X.export_lmms_eval(data, out, tasks=["common"])
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(table, vocabulary, path, progress):
        path.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(X, "_write_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        X.export_lmms_eval(data, out, tasks=["common", "odd_one"])
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_cli_exports_and_reports_errors(pipeline, tmp_path):
    data, _, _, _ = pipeline
    out = tmp_path / "cli"
    r = mimic("export", "lmms-eval", "--data-dir", str(data), "--out", str(out), "--tasks", "odd_one,common",
              "--max-new-tokens", "32")  # fmt: skip
    assert "  mimic_odd_one: 10 items, " in r.stdout and "  mimic_common: 12 items, " in r.stdout
    assert f"--include_path {out} --tasks mimic" in r.stdout
    assert load_yaml(out / "mimic_common.yaml")["generation_kwargs"]["max_new_tokens"] == 32
    assert load_yaml(out / "_mimic.yaml")["task"] == ["mimic_odd_one", "mimic_common"]
    bad = mimic("export", "lmms-eval", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "x"), check=False)
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"mimic export lmms-eval: {tmp_path / 'none'}/datasets/eval/counting.parquet: "
                                 "the counting eval set does not exist")  # fmt: skip


def test_lmms_eval_itself_runs_the_exported_group(pipeline):
    """Where lmms-eval is installed (it is no dependency: it pulls torchvision), its own task loader and
    evaluator run the export with its dummy model, and report our numbers."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    _, out, _, _ = pipeline
    utils = load_utils(out)
    manager = TaskManager(include_path=str(out))
    assert {f"mimic_{t}" for t in TASKS} | {"mimic"} <= set(manager.all_tasks)
    results = simple_evaluate(model="dummy", model_args="response=4", tasks=["mimic"], task_manager=manager,
                              device="cpu", bootstrap_iters=0)["results"]  # fmt: skip
    expected = {}
    for task in TASKS:
        records = [utils.mimic_process_results(doc, ["4"]) for doc in load_task_dataset(out, task)]
        expected[task] = aggregated(utils, task, records)
        assert {m: results[f"mimic_{task}"][f"{m},none"] for m in utils.METRICS[task]} == expected[task]
    assert expected["counting"]["mimic_score"] > 0
    assert results["mimic"]["mimic_score,none"] == pytest.approx(sum(e["mimic_score"] for e in expected.values()) / 4)


def test_without_a_catalogue_the_export_scores_without_vocabulary_and_says_so(pipeline, tmp_path):
    data, _, _, _ = pipeline
    bare = copy_eval_set(data, tmp_path / "generated", "common")  # as `mimic generate` leaves it: no mimic.duckdb
    result = X.export_lmms_eval(bare, tmp_path / "out", tasks=["common"])
    assert result.vocabulary.startswith(f"none for some tasks (no catalogue at {bare.resolve()}/mimic.duckdb")
    ds = load_task_dataset(tmp_path / "out", "common")
    assert set(map(tuple, ds["vocabulary"])) == {()}
    utils = load_utils(tmp_path / "out")
    hedge = f"{ds[0]['gt']} or {next(v for v in DEFAULT_TAXONOMY['polygon'] if v != ds[0]['gt'])}"
    assert utils.score_item(ds[0], hedge).correct is True  # as the pipeline scores without a vocabulary
    assert scoring.score_answer("common", hedge, {"answer": ds[0]["gt"], "query": []}, None).correct is True
