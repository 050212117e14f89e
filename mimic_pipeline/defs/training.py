"""Stage `training`: the tiny base model and its fine-tuned checkpoints, and the checkpoint registry.

Each training asset runs one recipe (core/training/recipes.py) and writes a checkpoint directory
under `checkpoints/<name>` (DONE last), then adds `<name>` to the dynamic partition set
`checkpoint`, over which evaluation is partitioned. The `checkpoints` asset keeps the DuckDB table
of the same name in step with the folder, so checkpoints a user copies in are listed too.
"""

import json
import time
from pathlib import Path

import dagster as dg

from ..core import catalog
from ..core.files import config_hash
from ..core.reports import loss_plot
from ..core.tables import markdown_table
from ..core.errors import InputFileError
from ..core.training.checkpoints import NAME_PATTERN, complete_checkpoints, read_metadata
from ..core.training.recipes import Recipe, configured_recipe
from ..core.training.trainer import run_recipe
from .datasets import single_image_items, train_items
from .metadata import catalog_schema, image_markdown, table_metadata
from .partitions import checkpoint_partitions
from .resources import MimicPaths

GROUP = "training"
OWNERS = ["team:mimic"]
TRAINING_VERSION = "training/1"


class TrainingSettings(dg.Config):
    """Which checkpoint to write and how to change the recipe's defaults (see README, "Recipes")."""

    checkpoint_name: str = ""  # default: the recipe's name
    base_checkpoint: str = ""  # fine-tuning recipes: the checkpoint to start from (default: base)
    steps_scale: float = 1.0  # multiplies every default step count (quick runs: 0.1)
    overrides_json: str = ""  # any Recipe field, e.g. {"lr": 1e-3, "pool": 4, "lora_r": 16}
    heldout_items: int = 200  # kept out of training and answered before / after it

    def recipe(self, name: str) -> Recipe:
        try:
            return configured_recipe(name, self.steps_scale, json.loads(self.overrides_json or "{}"))
        except ValueError as e:
            raise dg.Failure(f"overrides_json: {e}") from e


def _progress(context: dg.AssetExecutionContext, label: str):
    last = {"t": 0.0}

    def log(stage: str, step: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if step == total or now - last["t"] > 10:
            last["t"] = now
            context.log.info(f"{label} {stage}: step {step}/{total}, loss {loss:.4f}")

    return log


def _train(context: dg.AssetExecutionContext, config: TrainingSettings, paths: MimicPaths, recipe_name: str) -> dg.MaterializeResult:
    recipe = config.recipe(recipe_name)
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
    context.log.info(f"training {name} ({recipe_name}: {recipe.steps} steps, batch {recipe.batch_size}, lr {recipe.lr})")
    try:
        result = run_recipe(recipe, out_dir, single, multi, base=base, names=names, n_heldout=config.heldout_items,
                            progress=_progress(context, name), lineage={"dagster_run_id": context.run.run_id})  # fmt: skip
    except (ValueError, InputFileError) as e:
        raise dg.Failure(str(e)) from e
    context.instance.add_dynamic_partitions(checkpoint_partitions.name, [name])
    plot = loss_plot(result.losses, out_dir / "loss.png", title=f"{name} ({recipe_name})")
    metadata = read_metadata(out_dir)
    return dg.MaterializeResult(
        metadata={
            "checkpoint": name, "dagster/uri": dg.MetadataValue.path(str(out_dir)), "preview": _files_preview(out_dir),
            "steps": result.steps, "trainable_parameters": result.trainable_parameters,
            "total_parameters": result.total_parameters, "wall_s": round(result.wall_s, 1),
            "final_loss": round(sum(result.losses[-20:]) / max(1, len(result.losses[-20:])), 4),
            "loss_plot": dg.MetadataValue.path(str(plot)),
            "loss_curve": image_markdown(plot, f"training loss of {name}"),
            "recipe": dg.MetadataValue.json(recipe.as_dict()),
            "masked_layers": str(metadata.get("masked_layers", [])),
            **_accuracy_metadata(result.heldout_accuracy),
        },  # fmt: skip
        data_version=dg.DataVersion(config_hash({"recipe": recipe.hash(), "data": metadata.get("training_set_version"),
                                                 "base": str(base)})),
    )


def _files_preview(folder: Path) -> dg.MetadataValue:
    """The checkpoint directory as a Markdown table: full weights or adapter + projector, tokenizer, metadata."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    rows = [(str(p.relative_to(folder)), f"{p.stat().st_size / 2**20:.2f}") for p in files]
    return dg.MetadataValue.md(markdown_table(["file", "MiB"], rows))


def _accuracy_metadata(accuracy: dict) -> dict:
    """Held-out accuracy before / after training: numbers under stable keys (plotted over runs) + a table."""
    if not accuracy:
        return {}
    md = {f"heldout_accuracy_{when}": float(acc["all"]) for when, acc in accuracy.items()}
    tasks = sorted({t for acc in accuracy.values() for t in acc})
    rows = [(when, *(acc.get(t) for t in tasks)) for when, acc in accuracy.items()]
    md["heldout_accuracy"] = dg.MetadataValue.md(markdown_table(["", *tasks], rows))
    return md


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
    def training_asset(context: dg.AssetExecutionContext, config: TrainingSettings, paths: MimicPaths) -> dg.MaterializeResult:
        return _train(context, config, paths, recipe_name)

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
