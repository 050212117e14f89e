"""The `mimic` command line: a thin layer over the Dagster definitions and the DuckDB catalogue.

    mimic demo                 materialize every asset on the embedded shapes world, through Dagster
    mimic query "select ..."   answer from the catalogue (read-only)
    mimic generate --coco ...  write the benchmark's item sets from annotation files, without Dagster
    mimic export lmms-eval     write the eval sets as lmms-eval tasks (Parquet with images, YAML, utils.py)
    mimic ui                   start the Dagster webserver + daemon on this project
    mimic fiftyone --task T    browse an eval set (and a checkpoint's answers) in FiftyOne (extra [fiftyone])
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _data_dir(args) -> str:
    return str(Path(args.data_dir or os.environ.get("MIMIC_DATA_DIR", "data")).resolve())


def _ensure_dagster_home(data_dir: str) -> Path:
    """Use $DAGSTER_HOME if set, else the project's committed dagster_home/ (or one in the data dir)."""
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"]).resolve()
    elif (PROJECT_ROOT / "dagster_home" / "dagster.yaml").exists():
        home = PROJECT_ROOT / "dagster_home"
    else:
        home = Path(data_dir) / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def cmd_demo(args) -> int:
    data_dir = _data_dir(args)
    os.environ["MIMIC_DATA_DIR"] = data_dir
    home = _ensure_dagster_home(data_dir)

    import dagster as dg

    from .core import catalog
    from .core.tables import text_table
    from .defs.build import build_definitions
    from .defs.demo import run_demo

    def given(**values):
        return {k: v for k, v in values.items() if v is not None}

    ops = {
        "shapes_world": given(seed=args.seed, n_eval_images=args.eval_images, n_train_images=args.train_images),
        "eval_items": given(seed=args.seed, items_per_cell=args.items_per_cell),
        "train_items": given(seed=args.seed, total_items=args.train_set_items),
        "single_image_items": given(seed=args.seed, n_items=args.single_image_items),
        "baseline_scores": given(seed=args.seed),
        **{f"{recipe}_checkpoint": given(steps_scale=args.train_scale, heldout_items=args.heldout_items)
           for recipe in ("base", "full_ft", "lora", "lora_masked")},
        "predictions": given(items_per_cell=args.eval_items_per_cell,
                             variants=args.variants.split(",") if args.variants else None),
    }
    run_config = {"ops": {name: {"config": cfg} for name, cfg in ops.items() if cfg}}
    print(f"MIMIC demo: data in {data_dir}, Dagster instance in {home}")
    started = time.perf_counter()
    defs = build_definitions(data_dir=data_dir)
    with dg.DagsterInstance.get() as instance:
        try:
            run_demo(defs, instance, run_config)
        except RuntimeError as e:
            print(f"\nmimic demo failed: {e}", file=sys.stderr)
            return 1
    db = catalog.catalog_path(data_dir)
    print(f"\nAll assets materialized in {time.perf_counter() - started:.0f}s.\n")
    for report, sql_file, name in (("Annotation index", "annotation_reports", "index_overview"),
                                   ("Item sets and reference baselines (accuracy %)", "dataset_reports", "items_overview"),
                                   ("Checkpoints (held-out accuracy %)", "training", "checkpoint_overview"),
                                   ("Leaderboard (%; checkpoints appear once evaluated)", "evaluation", "leaderboard")):
        cols, rows = catalog.query(db, catalog.named_queries(sql_file)[name])
        print(f"{report}:\n{text_table(cols, rows)}\n")
    print(f"\nCatalogue:     {db}   (try: mimic query \"select * from annotation_builds\")")
    print(f"Shapes world:  {Path(data_dir) / 'sources' / 'shapes'}")
    print(f"Parquet index: {Path(data_dir) / 'index'}")
    print(f"Item sets:     {Path(data_dir) / 'datasets'}   (views eval_items, train_items)")
    print(f"Checkpoints:   {Path(data_dir) / 'checkpoints'}   (table checkpoints)")
    print(f"Dagster UI:    mimic ui   (runs, metadata and checks of this demo are in {home})")
    return 0


def cmd_query(args) -> int:
    from .core import catalog
    from .core.tables import markdown_table, text_table

    db = catalog.catalog_path(_data_dir(args))
    try:
        cols, rows = catalog.query(db, args.sql)
    except catalog.CatalogError as e:
        print(f"mimic query: {e}", file=sys.stderr)
        return 2
    if args.format == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(cols)
        w.writerows(rows)
    elif args.format == "json":
        print(json.dumps([dict(zip(cols, r)) for r in rows], default=str, indent=1))
    elif args.format == "markdown":
        print(markdown_table(cols, rows))
    else:
        print(text_table(cols, rows))
    return 0


def cmd_generate(args) -> int:
    """The benchmark without Dagster: annotation files in, item Parquet out."""
    import pyarrow as pa

    from .core.annotations import load_coco, load_openimages
    from .core.errors import InputFileError
    from .core.sampling.balance import answer_balance
    from .core.sampling.config import DEFAULT_TRAIN_MIX, BenchmarkConfig
    from .core.sampling.generate import generate_eval_sets, generate_train_sets, write_item_sets
    from .core.sampling.pools import SamplingError, build_sampling_index
    from .core.tables import text_table

    oi_files = (args.openimages_boxes, args.openimages_classes, args.openimages_hierarchy)
    if not args.coco and not any(oi_files):
        print("mimic generate: give --coco (eval sets) and/or the three --openimages-* files (training set)", file=sys.stderr)
        return 2
    if any(oi_files) and not all(oi_files):
        print("mimic generate: --openimages-boxes, --openimages-classes and --openimages-hierarchy go together", file=sys.stderr)
        return 2
    cfg = BenchmarkConfig(seed=args.seed, items_per_cell=args.items_per_cell)

    def progress(task, done, total):
        if done == total:
            print(f"  {task}: {total} items")
        elif sys.stdout.isatty():
            print(f"  {task}: {done}/{total} items", end="\r", flush=True)

    made: list[pa.Table] = []
    try:
        if args.coco:
            index = load_coco(args.coco, "coco", args.coco_split, args.images, require_images=bool(args.images))
            sampling = build_sampling_index(index.categories, index.images, index.instance_counts, "coco", args.coco_split)
            print(f"eval sets from {args.coco} ({sampling.n_images} images, {len(sampling.names)} categories)")
            tables = generate_eval_sets(sampling, cfg, args.images or "", progress)
            write_item_sets(args.out, "eval", tables)
            made += tables.values()
        if all(oi_files):
            index = load_openimages(*oi_files, "openimages", args.openimages_split, args.openimages_images,
                                    require_images=bool(args.openimages_images))  # fmt: skip
            sampling = build_sampling_index(index.categories, index.images, index.instance_counts, "openimages", args.openimages_split)
            print(f"training set from {args.openimages_boxes} ({sampling.n_images} images, {len(sampling.names)} categories)")
            tables = generate_train_sets(sampling, cfg, args.openimages_images or "", args.train_items, DEFAULT_TRAIN_MIX, progress)
            write_item_sets(args.out, "train", tables, llava=True)
            made += tables.values()
    except (InputFileError, SamplingError) as e:
        print(f"mimic generate: {e}", file=sys.stderr)
        return 1
    rows = answer_balance(pa.concat_tables(made))
    print("\nAnswer balance (majority share vs the 1/k + 10 points limit):")
    print(text_table(list(rows[0]), [tuple(r.values()) for r in rows]))
    print(f"\nItems written under {Path(args.out).resolve()}")
    return 0


def cmd_train(args) -> int:
    """One recipe outside Dagster; runs under `accelerate launch` unchanged (multi-GPU or multi-process CPU).

    Started by a Dagster Pipes client (a training asset with `launcher: pipes`), the main process
    streams progress to the run's log and reports the checkpoint as the asset's materialization;
    an error goes back through Pipes too, so the asset fails with it.
    """
    from .core.errors import InputFileError
    from .core.training.launch import pipes_training

    try:
        with pipes_training(args.recipe) as pipes:
            result = _train(args, pipes)
    except (ValueError, InputFileError) as e:
        print(f"mimic train: {e}", file=sys.stderr)
        return 2
    if not result.main_process:
        return 0
    print(f"checkpoint {result.path} ({result.steps} steps, {result.wall_s:.0f}s, "
          f"{result.trainable_parameters:,} trainable parameters)")  # fmt: skip
    for when, acc in result.heldout_accuracy.items():
        print(f"  held-out accuracy {when}: " + ", ".join(f"{k} {v}" for k, v in acc.items()))
    return 0


def _train(args, pipes):
    from .core.training.recipes import configured_recipe
    from .core.training.trainer import run_recipe

    datasets = Path(_data_dir(args)) / "datasets"
    single = [Path(p) for p in args.single_image] or [datasets / "single_image" / "items.parquet"]
    multi = [Path(p) for p in args.train] or sorted((datasets / "train").glob("*.parquet"))
    if args.recipe == "base":
        multi = []
    recipe = configured_recipe(args.recipe, args.steps_scale, json.loads(args.overrides or "{}"), paper=args.paper)
    if args.recipe != "base" and not args.base:
        raise ValueError(f"recipe {args.recipe} fine-tunes a checkpoint: give --base DIR")
    if recipe.single_image_share == 0:
        single = []
    progress = pipes.progress(Path(args.out).name) if pipes else _progress_bars(args.recipe)
    result = run_recipe(recipe, args.out, single, multi, base=args.base, n_heldout=args.heldout, progress=progress,
                        names=pipes.names if pipes else None, lineage=pipes.lineage if pipes else None)  # fmt: skip
    if pipes and result.main_process:
        pipes.report(Path(args.out))
    return result


def _progress_bars(recipe: str):
    """A progress bar per stage with the running loss (a resumed run starts at its saved step)."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, initial=step - 1, desc=f"{recipe}: {stage}", unit="step")
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if step == total:
            bar.close()

    return progress


def cmd_export_lmms_eval(args) -> int:
    """The eval sets of the data folder as lmms-eval tasks; the work is in core/export/lmms_eval.py."""
    from tqdm import tqdm

    from .core.errors import InputFileError
    from .core.export.lmms_eval import DEFAULT_MAX_NEW_TOKENS, GROUP, export_lmms_eval

    bars: dict[str, tqdm] = {}

    def progress(task: str, done: int, total: int) -> None:
        bar = bars.get(task)
        if bar is None:
            bar = bars[task] = tqdm(total=total, desc=task, unit="item")
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    tasks = args.tasks.split(",") if args.tasks else None
    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens
    try:
        result = export_lmms_eval(_data_dir(args), args.out, tasks, max_new_tokens, progress)
    except (InputFileError, ValueError, RuntimeError) as e:
        print(f"mimic export lmms-eval: {e}", file=sys.stderr)
        return 1
    for t in result.tasks:
        print(f"  {GROUP}_{t.task}: {t.items} items, {t.images} images -> {t.parquet}")
    print(f"scoring vocabulary: {result.vocabulary}")
    print(f"lmms-eval tasks in {result.out}; run them with:\n"
          f"  lmms_eval --model <model> --model_args <args> --include_path {result.out} --tasks {GROUP}")  # fmt: skip
    return 0


def cmd_ui(args) -> int:
    data_dir = _data_dir(args)
    os.environ["MIMIC_DATA_DIR"] = data_dir
    home = _ensure_dagster_home(data_dir)
    print(f"Dagster webserver + daemon on http://{args.host}:{args.port} (DAGSTER_HOME={home})")
    # `dg dev` (webserver + daemon) on this project; it must see our venv as the active one.
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(bin_dir / "dg"), "dev", "--host", args.host, "--port", str(args.port)]
    return subprocess.call(cmd, cwd=PROJECT_ROOT, env=env)


def cmd_fiftyone(args) -> int:
    """Build (or rebuild) the FiftyOne dataset of one eval set; with --launch, serve the App until Ctrl-C."""
    from tqdm import tqdm

    from .core.errors import InputFileError
    from .core.fiftyone_view import FiftyOneMissing, build_dataset, launch, stop_app

    bar: tqdm | None = None

    def progress(stage: str, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=f"mimic fiftyone: {stage}", unit="sample")
        bar.update(done - bar.n)

    data_dir = _data_dir(args)
    try:
        dataset, spec = build_dataset(data_dir, args.task, args.checkpoint, args.variant, progress=progress)
    except (InputFileError, FiftyOneMissing, ValueError) as e:
        print(f"mimic fiftyone: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    for note in spec.notes[:10]:
        print(f"  note: {note}")
    if len(spec.notes) > 10:
        print(f"  ... and {len(spec.notes) - 10} more notes")
    print(f"FiftyOne dataset {dataset.name!r}: {spec.n_items} items (groups), {len(spec.records)} images, "
          f"slices {spec.slices[0]}..{spec.slices[-1]}")  # fmt: skip
    example = ('(F("axis") == "spread") & (F("correct") == False)' if args.checkpoint else 'F("axis") == "spread"')
    print(f"  in Python: import fiftyone as fo; from fiftyone import ViewField as F\n"
          f"             ds = fo.load_dataset({dataset.name!r}); ds.match({example})")
    if not args.launch:
        print(f"  browse it: mimic fiftyone --task {args.task}"
              + (f" --checkpoint {args.checkpoint} --variant {spec.variant}" if args.checkpoint else "") + " --launch")
        return 0
    # a process started in the background by a script inherits an ignored SIGINT: take Ctrl-C back
    signal.signal(signal.SIGINT, signal.default_int_handler)
    session, url = launch(dataset, args.port, args.host)
    print(f"FiftyOne App on {url}  (Ctrl-C to stop)", flush=True)
    try:
        session.wait(-1)
    except KeyboardInterrupt:
        pass
    finally:
        stop_app()  # bounded: FiftyOne's own exit waits on the server without a limit
    print("stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mimic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="materialize every asset on the embedded shapes world, through Dagster")
    d.add_argument("--data-dir", help="artefact folder (default: $MIMIC_DATA_DIR or ./data)")
    d.add_argument("--seed", type=int, help="shapes world seed (default 0)")
    d.add_argument("--eval-images", type=int, help="shapes world eval images (default 3000)")
    d.add_argument("--train-images", type=int, help="shapes world train images (default 20000)")
    d.add_argument("--items-per-cell", type=int, help="eval items per (task, study, value) cell (default 100)")
    d.add_argument("--train-set-items", type=int, help="training items over all tasks (default 198000)")
    d.add_argument("--single-image-items", type=int, help="single-image instruction items (default 60000)")
    d.add_argument("--train-scale", type=float, help="multiply every training recipe's steps (default 1; quick look: 0.1)")
    d.add_argument("--heldout-items", type=int, help="items held out of each training run to measure it (default 200)")
    d.add_argument("--eval-items-per-cell", type=int, default=10,
                   help="eval items per cell the checkpoints answer (default 10 of the 100; 0: all)")
    d.add_argument("--variants", help="comma-separated evaluation variants (default pool1,pool4,pixels4)")
    d.set_defaults(func=cmd_demo)

    q = sub.add_parser("query", help="run one SQL query against the catalogue, read-only")
    q.add_argument("sql")
    q.add_argument("--data-dir", help="artefact folder (default: $MIMIC_DATA_DIR or ./data)")
    q.add_argument("--format", choices=["text", "csv", "json", "markdown"], default="text")
    q.set_defaults(func=cmd_query)

    g = sub.add_parser("generate", help="write MIMIC item sets from COCO / OpenImages files, without Dagster")
    g.add_argument("--coco", help="COCO instances JSON: eval sets are drawn from it")
    g.add_argument("--images", help="the COCO images folder (then every listed image must exist)")
    g.add_argument("--coco-split", default="val2017")
    g.add_argument("--openimages-boxes", help="OpenImages box CSV: the training set is drawn from it")
    g.add_argument("--openimages-classes", help="OpenImages class-descriptions CSV")
    g.add_argument("--openimages-hierarchy", help="OpenImages hierarchy JSON")
    g.add_argument("--openimages-images", help="the OpenImages images folder (then every image must exist)")
    g.add_argument("--openimages-split", default="train")
    g.add_argument("--out", required=True, help="output folder (eval/, train/, llava/)")
    g.add_argument("--items-per-cell", type=int, default=100, help="eval items per (task, study, value) cell")
    g.add_argument("--train-items", type=int, default=198_000, help="training items over all tasks")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train", help="train one recipe into a checkpoint directory, without Dagster "
                                     "(also under `accelerate launch -m mimic_pipeline.cli train ...`)")  # fmt: skip
    t.add_argument("--recipe", required=True, choices=["base", "full_ft", "lora", "lora_masked"])
    t.add_argument("--out", required=True, help="checkpoint directory to write (DONE is written last)")
    t.add_argument("--base", help="checkpoint to fine-tune: one trained here or a downloaded LLaVA-OV / Qwen2-VL folder")
    t.add_argument("--data-dir", help="where the item sets are (default: $MIMIC_DATA_DIR or ./data)")
    t.add_argument("--single-image", nargs="*", default=[], help="single-image item Parquet (default: the data dir's)")
    t.add_argument("--train", nargs="*", default=[], help="multi-image item Parquet files (default: the data dir's)")
    t.add_argument("--steps-scale", type=float, default=1.0, help="multiply the recipe's step counts")
    t.add_argument("--overrides", default="", help='JSON of recipe fields, e.g. \'{"lr": 1e-4, "batch_size": 4}\'')
    t.add_argument("--paper", action="store_true", help="the paper's LoRA settings (lr 2.5e-5, r 128) for real models")
    t.add_argument("--heldout", type=int, default=200, help="items held out and answered before / after training")
    t.set_defaults(func=cmd_train)

    x = sub.add_parser("export", help="write the benchmark in another tool's format")
    xsub = x.add_subparsers(dest="format", required=True)
    le = xsub.add_parser("lmms-eval", help="the eval sets as lmms-eval tasks: Parquet with the images embedded, "
                                           "task YAML, a group `mimic`, and utils.py with MIMIC's scoring")  # fmt: skip
    le.add_argument("--out", required=True, help="folder to write (replaced whole; a new, empty or earlier export folder)")
    le.add_argument("--data-dir", help="where the eval sets are (default: $MIMIC_DATA_DIR or ./data)")
    le.add_argument("--tasks", help="comma-separated tasks (default: counting,listing,common,odd_one)")
    le.add_argument("--max-new-tokens", type=int, help="generation limit written into the task YAML (default 64)")
    le.set_defaults(func=cmd_export_lmms_eval)

    u = sub.add_parser("ui", help="start the Dagster webserver and daemon on this project")
    u.add_argument("--data-dir", help="artefact folder (default: $MIMIC_DATA_DIR or ./data)")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(func=cmd_ui)

    f = sub.add_parser("fiftyone", help="browse an eval set and a checkpoint's answers in FiftyOne (extra [fiftyone])")
    f.add_argument("--task", required=True, help="counting, listing, common or odd_one")
    f.add_argument("--checkpoint", help="add this checkpoint's answers (predictions/<checkpoint>/<task>.parquet)")
    f.add_argument("--variant", help="evaluation variant of the predictions (default pool1, or the only one)")
    f.add_argument("--data-dir", help="artefact folder (default: $MIMIC_DATA_DIR or ./data)")
    f.add_argument("--launch", action="store_true", help="serve the FiftyOne App until Ctrl-C")
    f.add_argument("--host", default="127.0.0.1", help="address the App listens on (default 127.0.0.1)")
    f.add_argument("--port", type=int, default=5151, help="App port (default 5151)")
    f.set_defaults(func=cmd_fiftyone)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
