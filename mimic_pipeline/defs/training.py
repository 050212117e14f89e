"""Stage `training`: the tiny base model and its fine-tuned checkpoints, and the checkpoint registry.

Each training asset runs one recipe (core/training/recipes.py) and writes a checkpoint directory
under `checkpoints/<name>` (DONE last), then adds `<name>` to the dynamic partition set
`checkpoint`, over which evaluation is partitioned. The `checkpoints` asset keeps the DuckDB table
of the same name in step with the folder, so checkpoints a user copies in are listed too.

A training asset trains in its own process (`launcher: in_process`) or starts `mimic train` under
`accelerate launch` as an external job through the `training_pipes` Pipes client (`launcher:
pipes`; a local subprocess, or a GPU pod on Kubernetes: defs/k8s.py); either way the checkpoint
and the reported metadata are the same (core/training/launch.py, core/training/summary.py).
"""

import json
from pathlib import Path

import dagster as dg

from ..core import catalog
from ..core.errors import InputFileError
from ..core.training.checkpoints import NAME_PATTERN, complete_checkpoints, read_metadata
from ..core.training.launch import accelerate_command, child_env, throttled_progress, train_argv
from ..core.training.recipes import Recipe, configured_recipe
from ..core.training.summary import checkpoint_summary
from ..core.training.trainer import run_recipe
from .datasets import single_image_items, train_items
from .metadata import catalog_schema, table_metadata
from .partitions import checkpoint_partitions
from .resources import MimicPaths

GROUP = "training"
OWNERS = ["team:mimic"]
TRAINING_VERSION = "training/1"


LAUNCHERS = ("in_process", "pipes")


class TrainingSettings(dg.Config):
    """Which checkpoint to write, how to change the recipe's defaults (see README, "Recipes"), and where
    the training runs (README, "Training as an external job")."""

    checkpoint_name: str = ""  # default: the recipe's name
    base_checkpoint: str = ""  # fine-tuning recipes: the checkpoint to start from (default: base)
    steps_scale: float = 1.0  # multiplies every default step count (quick runs: 0.1)
    overrides_json: str = ""  # any Recipe field, e.g. {"lr": 1e-3, "pool": 4, "lora_r": 16}
    heldout_items: int = 200  # kept out of training and answered before / after it
    launcher: str = "in_process"  # or "pipes": `accelerate launch ... mimic train` through the training_pipes client
    processes: int = 1  # data-parallel processes of that job (GPUs of its pod on a cluster); > 1 needs "pipes"

    def recipe(self, name: str) -> Recipe:
        try:
            return configured_recipe(name, self.steps_scale, json.loads(self.overrides_json or "{}"))
        except ValueError as e:
            raise dg.Failure(f"overrides_json: {e}") from e

    def check_launch(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise dg.Failure(f"launcher {self.launcher!r}: use {' or '.join(LAUNCHERS)}")
        if self.processes < 1 or (self.processes > 1 and self.launcher != "pipes"):
            raise dg.Failure(f"processes={self.processes}: give 1, or more with launcher 'pipes' "
                             "(several processes run as an `accelerate launch` job)")  # fmt: skip


def _train(context: dg.AssetExecutionContext, config: TrainingSettings, paths: MimicPaths, pipes_client,
           recipe_name: str) -> dg.MaterializeResult:  # fmt: skip
    recipe = config.recipe(recipe_name)
    config.check_launch()
    name = config.checkpoint_name or recipe_name
    if not NAME_PATTERN.match(name):
        raise dg.Failure(f"checkpoint_name {name!r}: use letters, digits, '_', '.', '-' (it becomes a partition key)")
    out_dir = paths.checkpoints / name
    base, names = None, None
    if recipe_name == "base":
        names = _category_names(paths)
    else:
        base = paths.checkpoints / (config.base_checkpoint or "base")
        if not (base / "DONE").exists():
            raise dg.Failure(f"base checkpoint {base} is missing or incomplete: materialize base_checkpoint first")
    single = [paths.datasets / "single_image" / "items.parquet"]
    multi = sorted((paths.datasets / "train").glob("*.parquet")) if recipe_name != "base" else []
    if recipe_name != "base" and not multi:
        raise dg.Failure(f"no training set under {paths.datasets / 'train'}: materialize train_items first")
    context.log.info(f"training {name} ({recipe_name}: {recipe.steps} steps, batch {recipe.batch_size}, lr {recipe.lr}; "
                     f"{config.launcher}, {config.processes} process(es))")  # fmt: skip
    if config.launcher == "pipes":
        argv = train_argv(recipe_name, out_dir, single, multi, base, config.steps_scale, config.overrides_json,
                          config.heldout_items)  # fmt: skip
        result = _run_job(context, pipes_client, accelerate_command(argv, config.processes), names, config.processes)
    else:
        try:
            run_recipe(recipe, out_dir, single, multi, base=base, names=names, n_heldout=config.heldout_items,
                       progress=throttled_progress(context.log.info, name), lineage={"dagster_run_id": context.run.run_id})  # fmt: skip
        except (ValueError, InputFileError) as e:
            raise dg.Failure(str(e)) from e
        summary = checkpoint_summary(out_dir, recipe_name)
        result = dg.MaterializeResult(metadata={k: _METADATA[kind](v) for k, (kind, v) in summary.metadata.items()},
                                      data_version=dg.DataVersion(summary.data_version))  # fmt: skip
    context.instance.add_dynamic_partitions(checkpoint_partitions.name, [name])
    return result


_METADATA = {"text": dg.MetadataValue.text, "path": dg.MetadataValue.path, "int": dg.MetadataValue.int,
             "float": dg.MetadataValue.float, "md": dg.MetadataValue.md, "json": dg.MetadataValue.json}  # fmt: skip


def _run_job(context: dg.AssetExecutionContext, pipes_client, command: list[str], names, processes: int) -> dg.MaterializeResult:
    """Run the training job through the Pipes client; its main process reports the materialization.

    A failed job fails the asset with the error its main process sent back through Pipes (the job
    builds the checkpoint in a staging folder and swaps it in only when complete, so a failure
    leaves the previous checkpoint in place).
    """
    extras = {"processes": processes, **({"categories": list(names)} if names else {})}
    try:
        return pipes_client.run(context=context, command=command, extras=extras, env=child_env()).get_materialize_result()
    except Exception as e:  # the client's own error says only "failed with code N" (or the pod's phase)
        error = _child_error(context)
        if error is None:
            raise
        raise dg.Failure(f"the training job failed: {error}") from e


def _child_error(context: dg.AssetExecutionContext) -> str | None:
    """The exception the job's main process reported through Pipes in this step, if it got that far."""
    step = str(context.op_execution_context.op_handle)  # the step key of a single-asset step
    for record in reversed(context.instance.all_logs(context.run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)):
        event = record.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event else None
        if error is not None and event.step_key == step:
            return error.message.strip()  # "ValueError: ..." as the job formatted it
    return None


def _category_names(paths: MimicPaths) -> tuple[list[str], list[str]]:
    """Leaf categories and parents of the shapes world: the tiny model's vocabulary."""
    cols, rows = catalog.query(paths.catalog, "select distinct name, parent from categories where source = 'shapes' order by name")
    if not rows:
        raise dg.Failure("no shapes categories in the catalogue: materialize annotation_index[shapes] first")
    parents = sorted({p for _, p in rows if p})
    return [n for n, _ in rows if n not in parents], parents


def _training_asset(recipe_name: str, deps: list, doc: str):
    @dg.asset(
        name=f"{recipe_name}_checkpoint", deps=deps, group_name=GROUP, owners=OWNERS,
        kinds={"pytorch", "huggingface"}, tags={"stage": "training"}, code_version=TRAINING_VERSION,
        description=doc,
    )  # fmt: skip
    def training_asset(context: dg.AssetExecutionContext, config: TrainingSettings, paths: MimicPaths,
                       training_pipes: dg.ResourceParam[dg.PipesClient]) -> dg.MaterializeResult:  # fmt: skip
        return _train(context, config, paths, training_pipes, recipe_name)

    return training_asset


ALL_TRAIN_ITEMS = dg.AssetDep(train_items, partition_mapping=dg.AllPartitionMapping())
base_checkpoint = _training_asset("base", [single_image_items], (
    "The tiny LLaVA-OneVision (SigLIP tower, Qwen2 LM, the project's tokenizer) trained from scratch on the "
    "single-image instruction set, after a short supervised vision pre-training. Checkpoint `base`."))  # fmt: skip
full_ft_checkpoint = _training_asset("full_ft", [base_checkpoint, ALL_TRAIN_ITEMS, single_image_items], (
    "Full fine-tuning of the language model and projector on the procedural multi-image set (vision tower "
    "frozen), from `base`. Checkpoint `full_ft`."))  # fmt: skip
lora_checkpoint = _training_asset("lora", [base_checkpoint, ALL_TRAIN_ITEMS, single_image_items], (
    "LoRA (r=128, alpha=32, dropout 0.05 on every linear layer of the language model) plus a trained "
    "projector, from `base`. Checkpoint `lora` (adapter + projector; its config names the base)."))  # fmt: skip
lora_masked_checkpoint = _training_asset("lora_masked", [base_checkpoint, ALL_TRAIN_ITEMS, single_image_items], (
    "`lora` with the layer-wise attention mask on the second half of the language model: vision tokens "
    "attend only to their own image there (block-diagonal, computed per image block). Checkpoint `lora_masked`."))  # fmt: skip
TRAINING_ASSETS = [base_checkpoint, full_ft_checkpoint, lora_checkpoint, lora_masked_checkpoint]
TRAINING_RUN_TAG = {"mimic/stage": "training"}  # a run tag: the cluster's run queue limits these runs (docs/deployment.md)
training_job = dg.define_asset_job(
    "train_checkpoints", selection=dg.AssetSelection.assets(*TRAINING_ASSETS), tags=TRAINING_RUN_TAG,
    description="The training assets (select the ones to run in the Launchpad); its runs carry the run tag "
                "mimic/stage=training, which a deployment's run queue can limit (GPU jobs at once).",
)  # fmt: skip


@dg.asset(
    deps=TRAINING_ASSETS, group_name=GROUP, owners=OWNERS, kinds={"duckdb"}, tags={"stage": "training"},
    pool="duckdb", automation_condition=dg.AutomationCondition.eager(),
)  # fmt: skip
def checkpoints(context: dg.AssetExecutionContext, paths: MimicPaths) -> dg.MaterializeResult:
    """DuckDB table `checkpoints`: every complete checkpoint in the checkpoints folder (trained here or
    copied in), with recipe, parent, path, creation time, config hash and training-data version."""
    rows = [checkpoint_row(folder) for folder in complete_checkpoints(paths.checkpoints)]
    with catalog.transaction(paths.catalog) as con:
        con.execute("delete from checkpoints")
        for row in rows:
            con.execute(f"insert into checkpoints values ({', '.join('?' * len(row))})", list(row.values()))
    names = [r["name"] for r in rows]
    known = set(context.instance.get_dynamic_partitions(checkpoint_partitions.name))
    new = [n for n in names if n not in known]
    if new:  # copied in by hand: evaluation is partitioned over them too
        context.instance.add_dynamic_partitions(checkpoint_partitions.name, new)
    preview = (["name", "recipe", "parent", "steps"], [(r["name"], r["recipe"], r["parent"], r["steps"]) for r in rows])
    return dg.MaterializeResult(metadata={**table_metadata(row_count=len(rows), schema=catalog_schema(paths.catalog, "checkpoints"),
                                                           uri=paths.checkpoints, preview=preview),
                                          "new_partitions": ", ".join(new) or "none"})


def checkpoint_row(folder: Path) -> dict:
    meta = read_metadata(folder)
    return {
        "name": folder.name, "recipe": meta.get("recipe", "external"), "parent": meta.get("base_checkpoint"),
        "path": str(folder.resolve()), "created": meta.get("created") or (folder / "DONE").read_text().strip() or None,
        "config_hash": meta.get("config_hash"), "data_version": meta.get("training_set_version"),
        "steps": meta.get("steps"), "trainable_parameters": meta.get("trainable_parameters"),
        "architecture": meta.get("architecture"),
        "heldout_before": meta.get("heldout_accuracy", {}).get("before", {}).get("all"),
        "heldout_after": meta.get("heldout_accuracy", {}).get("after", {}).get("all"),
    }  # fmt: skip
