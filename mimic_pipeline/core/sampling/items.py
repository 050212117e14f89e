"""Item records: the draft a sampler returns, the final row schema (MIMIC.md section 3), Parquet IO."""

from __future__ import annotations

import json
from dataclasses import dataclass
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
    """One item as plain lists (hand-made items, items read back from a table)."""

    images: list[int]  # image indices into the SamplingIndex, in presentation order
    roles: list[str]  # per image: "needle" (holds what is asked about) or "distractor" (holds none of it)
    query: list[str]  # counted class names (Counting), the parent (Listing, Odd-One), empty (Common)
    answer: str
    answer_struct: dict


@dataclass
class ItemBatch:
    """The items of one cell as arrays: what a sampler returns, the validity engine checks and
    `generate` turns into rows. Rows may hold fewer images than `images` has columns: the rest is -1."""

    images: np.ndarray  # (items, width) int64 image indices in presentation order, -1 after the last image
    distractor: np.ndarray  # (items, width) bool: the image holds none of what is asked about
    query: list[list[str]]  # per item: counted class names (Counting), the parent (Listing, Odd-One), [] (Common)
    answers: list[str]
    structs: list[dict]  # per item: the answer's evidence (per-image counts or categories), written as JSON

    def __len__(self) -> int:
        return len(self.answers)

    @property
    def lengths(self) -> np.ndarray:
        return (self.images >= 0).sum(axis=1)

    @classmethod
    def from_drafts(cls, drafts: list[ItemDraft]) -> ItemBatch:
        images = padded_rows([d.images for d in drafts])
        distractor = np.zeros(images.shape, dtype=bool)
        for k, d in enumerate(drafts):
            shown = min(len(d.images), len(d.roles))
            distractor[k, :shown] = [r == "distractor" for r in d.roles[:shown]]
        return cls(images, distractor, [list(d.query) for d in drafts], [d.answer for d in drafts],
                   [d.answer_struct for d in drafts])  # fmt: skip


def padded_rows(image_lists: list[list[int]]) -> np.ndarray:
    """Image lists as one (lists, longest) int64 array, -1 after each list's end."""
    width = max((len(images) for images in image_lists), default=0)
    out = np.full((len(image_lists), width), -1, dtype=np.int64)
    for k, images in enumerate(image_lists):
        out[k, : len(images)] = images
    return out


def shuffle_rows(rng: np.random.Generator, *columns: np.ndarray, lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """Each row's first `lengths` entries in a random order, the same for every column (needles must
    not always come first); entries past a row's length stay where they are."""
    rows, width = columns[0].shape
    keys = rng.random((rows, width))
    if lengths is not None:
        keys[np.arange(width) >= lengths[:, None]] = 2.0  # past the end: sorts last, in place
    order = np.argsort(keys, axis=1, kind="stable")
    return [np.take_along_axis(c, order, axis=1) for c in columns]


_STRUCT_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # one encoder: json.dumps builds one per call


def struct_json(struct: dict) -> str:
    return _STRUCT_ENCODER.encode(struct)


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
