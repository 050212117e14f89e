"""Item records: the draft a sampler returns, the final row schema (MIMIC.md section 3), Parquet IO."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..files import atomic_path

# axis value columns: every item has n_images; the others are set where the study varies them
AXIS_COLUMNS = {"n_images": pa.int32(), "n_distractors": pa.int32(), "spread": pa.string(), "placement": pa.string(),
                "n_concepts": pa.int32(), "n_subcategories": pa.int32()}  # fmt: skip

ITEM_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("task", pa.string()),
        ("axis", pa.string()),
        ("axis_value", pa.string()),
        *AXIS_COLUMNS.items(),
        ("query", pa.list_(pa.string())),
        ("image_ids", pa.list_(pa.string())),
        ("image_paths", pa.list_(pa.string())),
        ("image_roles", pa.list_(pa.string())),
        ("question", pa.string()),
        ("template_id", pa.int32()),
        ("answer", pa.string()),
        ("answer_struct", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("seed", pa.int64()),
        ("generator_version", pa.string()),
        ("config_hash", pa.string()),
    ]
)


@dataclass
class ItemDraft:
    """What a task sampler decides; `generate` turns it into a row."""

    images: list[int]  # image indices into the SamplingIndex, in presentation order
    roles: list[str]  # per image: "needle" (holds what is asked about) or "distractor" (holds none of it)
    query: list[str]  # counted class names (Counting), the parent (Listing, Odd-One), empty (Common)
    answer: str
    answer_struct: dict
    axis_values: dict = field(default_factory=dict)  # per-item axis values beyond the cell's (none so far)


def shuffled(rng: np.random.Generator, images: list[int], roles: list[str], per_image: list) -> tuple[list, list, list]:
    """Present the images in a random order (needles must not always come first)."""
    order = rng.permutation(len(images)).tolist()
    return [images[i] for i in order], [roles[i] for i in order], [per_image[i] for i in order]


def struct_json(struct: dict) -> str:
    return json.dumps(struct, sort_keys=True, separators=(",", ":"))


def write_items(table: pa.Table, path: str | Path) -> Path:
    """Write items as Parquet atomically; same rows -> byte-identical file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table.cast(ITEM_SCHEMA), tmp, compression="zstd", row_group_size=50_000)
    return path


def llava_conversations(table: pa.Table) -> list[dict]:
    """Items in the LLaVA training format: an image list and human/assistant turns, one `<image>` per image."""
    out = []
    for item_id, paths, question, answer in zip(table.column("item_id").to_pylist(), table.column("image_paths").to_pylist(),
                                                table.column("question").to_pylist(), table.column("answer").to_pylist()):  # fmt: skip
        out.append({
            "id": item_id,
            "image": paths,
            "conversations": [{"from": "human", "value": "<image>\n" * len(paths) + question},
                              {"from": "gpt", "value": answer}],
        })  # fmt: skip
    return out


def write_llava_json(table: pa.Table, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(llava_conversations(table), separators=(",", ":")))
    return path
