"""What a finished checkpoint reports to Dagster, read from the checkpoint folder alone.

The training asset reports the same metadata whether it trained in its own process or started an
`accelerate launch` job through Dagster Pipes (locally or as a pod on a GPU node): both build it
here, from `mimic_checkpoint.json` and the loss curve, as (kind, value) pairs. The Dagster side
turns a pair into a `MetadataValue`; the Pipes side sends it as `{"raw_value", "type"}`. The kinds
are the metadata types both understand: text, path, int, float, md, json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..files import config_hash
from ..reports import loss_plot, png_markdown
from ..tables import markdown_table
from .checkpoints import read_metadata

LOSS_PLOT = "loss.png"  # beside the checkpoint's files (not listed in its metadata, so not checked)


@dataclass(frozen=True)
class CheckpointSummary:
    metadata: dict[str, tuple[str, object]]  # key -> (kind, value)
    data_version: str


def accuracy_metadata(accuracy: dict) -> dict[str, tuple[str, object]]:
    """Held-out accuracy before / after training: numbers under stable keys (plotted over runs) + a table."""
    if not accuracy:
        return {}
    md: dict[str, tuple[str, object]] = {f"heldout_accuracy_{when}": ("float", float(acc["all"])) for when, acc in accuracy.items()}
    tasks = sorted({t for acc in accuracy.values() for t in acc})
    rows = [(when, *(acc.get(t) for t in tasks)) for when, acc in accuracy.items()]
    md["heldout_accuracy"] = ("md", markdown_table(["", *tasks], rows))
    return md


def files_table(folder: Path) -> str:
    """The checkpoint directory as a Markdown table: full weights or adapter + projector, tokenizer, metadata."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return markdown_table(["file", "MiB"], [(str(p.relative_to(folder)), f"{p.stat().st_size / 2**20:.2f}") for p in files])


def checkpoint_summary(folder: str | Path, recipe_name: str) -> CheckpointSummary:
    """Metadata and data version of the complete checkpoint in `folder`; writes its loss plot beside it."""
    folder = Path(folder)
    meta = read_metadata(folder)
    name, losses = folder.name, meta.get("loss_curve", [])
    plot = loss_plot(losses, folder / LOSS_PLOT, title=f"{name} ({recipe_name})")
    tail = losses[-20:]
    metadata = {
        "checkpoint": ("text", name), "dagster/uri": ("path", str(folder)), "preview": ("md", files_table(folder)),
        "steps": ("int", int(meta["steps"])), "processes": ("int", int(meta.get("processes", 1))),
        "trainable_parameters": ("int", int(meta["trainable_parameters"])),
        "total_parameters": ("int", int(meta["total_parameters"])), "wall_s": ("float", round(float(meta["wall_s"]), 1)),
        "final_loss": ("float", round(sum(tail) / max(1, len(tail)), 4)),
        "loss_plot": ("path", str(plot)), "loss_curve": ("md", png_markdown(plot, f"training loss of {name}")),
        "recipe": ("json", meta["recipe_config"]), "masked_layers": ("text", str(meta.get("masked_layers", []))),
        **accuracy_metadata(meta.get("heldout_accuracy", {})),
    }  # fmt: skip
    version = config_hash({"recipe": meta["config_hash"], "data": meta.get("training_set_version"), "base": str(meta.get("base_path"))})
    return CheckpointSummary(metadata, version)
