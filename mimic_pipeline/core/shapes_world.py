"""The shapes world: the embedded default data source, rendered by the project itself.

Small RGB images of coloured shapes over a varied dark background. Categories are grouped under
parents the way COCO groups categories under super-categories, so every MIMIC task (Counting,
Listing, Common, Odd-One) has material. The eval split is written as a real COCO instances JSON and
the train split as real OpenImages V7 files (box CSV with the official header, class descriptions
CSV, hierarchy JSON in the nested ``Subcategory`` form), so the very same loaders read it as read
the real data sets.

Placement is by grid cell: an image of size S is cut into ``grid x grid`` cells and each object
takes its own cell, so shapes never overlap and there is no rejection loop that could spin. Each
shape is drawn through its own mask, and its bounding box is read back from that mask: what the
annotation says is exactly what was drawn (a shape that vanished raises instead of being dropped).

Every image draws its randomness from ``numpy.random.default_rng([seed, split, index])``, so the
output is byte-identical for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from .files import atomic_dir, atomic_path, config_hash, file_sha256

GENERATOR_VERSION = "shapes-world/1"

# OpenImages' real root label; it is not listed in the class descriptions, just as in OpenImages.
OPENIMAGES_ROOT = "/m/0bl9f"
OPENIMAGES_BOX_HEADER = [
    "ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
    "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside",
]  # fmt: skip

# parent -> children. Four children per parent so Listing and Odd-One have room to vary.
DEFAULT_TAXONOMY: dict[str, list[str]] = {
    "polygon": ["triangle", "square", "pentagon", "hexagon"],
    "round shape": ["circle", "ellipse", "semicircle", "ring"],
    "symbol": ["plus", "star", "arrow", "heart"],
}

# One fixed, bright colour per category (colour tied to class keeps recognition learnable by a tiny
# model, see notes/tiny-model.md); backgrounds stay dark (channels 15-70) so contrast is guaranteed.
DEFAULT_COLORS: dict[str, tuple[int, int, int]] = {
    "triangle": (230, 25, 75), "square": (60, 180, 75), "pentagon": (255, 225, 25),
    "hexagon": (0, 130, 200), "circle": (245, 130, 48), "ellipse": (145, 30, 180),
    "semicircle": (70, 240, 240), "ring": (240, 50, 230), "plus": (210, 245, 60),
    "star": (250, 190, 212), "arrow": (0, 160, 150), "heart": (255, 255, 255),
}  # fmt: skip
BACKGROUND_RANGE = (15, 70)


@dataclass(frozen=True)
class ShapesWorldConfig:
    """Everything that decides the rendered files; its hash is recorded with every artefact."""

    seed: int = 0
    image_size: int = 32  # 8 px cells = one 8 px vision patch each: a tiny model learns this in minutes (notes)
    grid: int = 4  # cells per side; each object takes one cell, so at most grid*grid objects
    n_eval_images: int = 3000
    n_train_images: int = 20000
    max_objects: int = 6
    max_categories_per_image: int = 3  # few distinct categories per image gives repeated instances
    crowd_fraction: float = 0.05  # share of non-empty images whose first object is a group/crowd
    color_mode: str = "fixed"  # "fixed": colour tied to category; "random": any bright colour
    taxonomy: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_TAXONOMY))

    def validate(self) -> None:
        cell = self.image_size // self.grid
        if cell < 6:
            raise ValueError(
                f"image_size {self.image_size} with grid {self.grid} gives {cell}px cells; "
                "shapes need at least 6px: lower grid or raise image_size"
            )
        if not 0 <= self.max_objects <= self.grid * self.grid:
            raise ValueError(f"max_objects must be between 0 and grid*grid = {self.grid**2}")
        if self.color_mode not in ("fixed", "random"):
            raise ValueError(f"color_mode must be 'fixed' or 'random', not {self.color_mode!r}")
        names = [c for children in self.taxonomy.values() for c in children]
        unknown = sorted(set(names) - set(SHAPE_DRAWERS))
        if unknown:
            raise ValueError(f"no drawing for shapes {unknown}; known: {sorted(SHAPE_DRAWERS)}")
        if len(set(names)) != len(names):
            raise ValueError("a shape may appear under one parent only")
        if not 0.0 <= self.crowd_fraction <= 1.0:
            raise ValueError("crowd_fraction must be in [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def hash(self) -> str:
        return config_hash({"generator": GENERATOR_VERSION, **self.to_dict()})

    def categories(self) -> list[tuple[int, str, str]]:
        """(category_id, name, parent) in a stable order; ids start at 1 as in COCO."""
        rows, next_id = [], 1
        for parent, children in self.taxonomy.items():
            for name in children:
                rows.append((next_id, name, parent))
                next_id += 1
        return rows


# --- drawing ------------------------------------------------------------------------------------
# Each drawer paints one shape in white on an "L" mask inside the box (x0, y0, x1, y1).


def _regular_polygon(box, n, rotation=-math.pi / 2):
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    return [
        (cx + r * math.cos(rotation + 2 * math.pi * k / n), cy + r * math.sin(rotation + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(box):
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.45
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_plus(d: ImageDraw.ImageDraw, box):
    x0, y0, x1, y1 = box
    w = max(2, round((x1 - x0) / 3))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    d.rectangle((cx - w / 2, y0, cx + w / 2, y1), fill=255)
    d.rectangle((x0, cy - w / 2, x1, cy + w / 2), fill=255)


def _draw_arrow(d: ImageDraw.ImageDraw, box):
    x0, y0, x1, y1 = box
    h = y1 - y0
    mid = x0 + (x1 - x0) * 0.55
    shaft = max(1.0, h / 6)
    cy = (y0 + y1) / 2
    d.rectangle((x0, cy - shaft, mid, cy + shaft), fill=255)
    d.polygon([(mid, y0), (x1, cy), (mid, y1)], fill=255)


def _draw_heart(d: ImageDraw.ImageDraw, box):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d.ellipse((x0, y0, x0 + w / 2 + 1, y0 + h / 2 + 1), fill=255)
    d.ellipse((x0 + w / 2 - 1, y0, x1, y0 + h / 2 + 1), fill=255)
    d.polygon([(x0, y0 + h * 0.3), (x1, y0 + h * 0.3), ((x0 + x1) / 2, y1)], fill=255)


def _draw_ring(d: ImageDraw.ImageDraw, box):
    width = max(2, round((box[2] - box[0]) / 5))
    d.ellipse(box, outline=255, width=width)


SHAPE_DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, tuple], None]] = {
    "triangle": lambda d, b: d.polygon(_regular_polygon(b, 3), fill=255),
    "square": lambda d, b: d.rectangle((b[0] + 1, b[1] + 1, b[2] - 1, b[3] - 1), fill=255),
    "pentagon": lambda d, b: d.polygon(_regular_polygon(b, 5), fill=255),
    "hexagon": lambda d, b: d.polygon(_regular_polygon(b, 6, rotation=0.0), fill=255),
    "circle": lambda d, b: d.ellipse(b, fill=255),
    "ellipse": lambda d, b: d.ellipse((b[0], b[1] + (b[3] - b[1]) * 0.22, b[2], b[3] - (b[3] - b[1]) * 0.22), fill=255),
    "semicircle": lambda d, b: d.pieslice((b[0], b[1], b[2], b[3] + (b[3] - b[1])), 180, 360, fill=255),
    "ring": _draw_ring,
    "plus": _draw_plus,
    "star": lambda d, b: d.polygon(_star(b), fill=255),
    "arrow": _draw_arrow,
    "heart": _draw_heart,
}  # fmt: skip


@dataclass(frozen=True)
class DrawnObject:
    category: str
    bbox: tuple[int, int, int, int]  # x, y, width, height in pixels, read back from the mask
    area: int  # painted pixels
    crowd: bool  # a group of several small instances annotated as one box (COCO iscrowd / OI IsGroupOf)


@dataclass(frozen=True)
class RenderedImage:
    index: int
    image_id: str
    file_name: str
    objects: tuple[DrawnObject, ...]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    lo, hi = BACKGROUND_RANGE
    c1 = rng.integers(lo, hi + 1, size=3).astype(np.float32)
    c2 = rng.integers(lo, hi + 1, size=3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    img += rng.normal(0.0, 3.0, size=img.shape)
    return np.clip(np.rint(img), lo - 8, hi + 8).astype(np.uint8)


def _object_color(cfg: ShapesWorldConfig, name: str, rng: np.random.Generator) -> tuple[int, int, int]:
    if cfg.color_mode == "fixed":
        return DEFAULT_COLORS[name]
    # random mode: any colour whose brightest channel is >= 150 (always contrasts the dark background)
    rgb = rng.integers(0, 256, size=3)
    rgb[rng.integers(0, 3)] = rng.integers(150, 256)
    return tuple(int(v) for v in rgb)


def _paint(canvas: Image.Image, cell_origin, cell: int, color, draw_fn) -> tuple[tuple[int, int, int, int], int]:
    mask = Image.new("L", (cell, cell), 0)
    draw_fn(ImageDraw.Draw(mask))
    box = mask.getbbox()
    if box is None:  # a shape that vanished must never reach the annotations
        raise RuntimeError("a shape rendered to no pixels; raise image_size or lower grid")
    canvas.paste(color, cell_origin, mask)
    x0, y0, x1, y1 = box
    area = int(np.count_nonzero(np.asarray(mask)))
    return (cell_origin[0] + x0, cell_origin[1] + y0, x1 - x0, y1 - y0), area


SPLIT_CODES = {"eval": 1, "train": 2}


def openimages_image_id(seed: int, index: int) -> str:
    """A 16-hex-digit id shaped like OpenImages' own ImageIDs, stable for (seed, index)."""
    return hashlib.blake2b(f"shapes:{seed}:{index}".encode(), digest_size=8).hexdigest()


def render_image(cfg: ShapesWorldConfig, split: str, index: int) -> tuple[Image.Image, RenderedImage]:
    """Render image `index` of `split`; a pure function of (config, split, index)."""
    rng = np.random.default_rng([cfg.seed, SPLIT_CODES[split], index])
    size, cell = cfg.image_size, cfg.image_size // cfg.grid
    canvas = Image.fromarray(_background(rng, size), "RGB")
    names = [name for _, name, _ in cfg.categories()]

    n_objects = int(rng.integers(0, cfg.max_objects + 1))
    objects: list[DrawnObject] = []
    if n_objects:
        k = int(rng.integers(1, min(n_objects, cfg.max_categories_per_image) + 1))
        chosen = rng.choice(len(names), size=k, replace=False)
        cells = rng.choice(cfg.grid * cfg.grid, size=n_objects, replace=False)
        crowd_first = bool(rng.random() < cfg.crowd_fraction)
        for j in range(n_objects):
            name = names[int(chosen[j % k] if j < k else chosen[rng.integers(0, k)])]
            color = _object_color(cfg, name, rng)
            origin = (int(cells[j] % cfg.grid) * cell, int(cells[j] // cfg.grid) * cell)
            crowd = crowd_first and j == 0
            if crowd:
                draw_fn = _group_drawer(name, cell, rng)
            else:
                s = int(rng.integers(math.ceil(cell * 0.55), cell))
                ox, oy = (int(v) for v in rng.integers(0, cell - s + 1, size=2))
                box = (ox, oy, ox + s - 1, oy + s - 1)
                draw_fn = lambda d, box=box, name=name: SHAPE_DRAWERS[name](d, box)  # noqa: E731
            bbox, area = _paint(canvas, origin, cell, color, draw_fn)
            objects.append(DrawnObject(name, bbox, area, crowd))

    if split == "eval":
        image_id, file_name = str(index + 1), f"{index + 1:06d}.png"
    else:
        image_id = openimages_image_id(cfg.seed, index)
        file_name = f"{image_id}.png"
    return canvas, RenderedImage(index, image_id, file_name, tuple(objects))


def _group_drawer(name: str, cell: int, rng: np.random.Generator):
    """Three small instances packed in one cell: a 'group of' box, like a crowd in COCO."""
    s = max(3, cell // 3)
    spots = [(0, 0), (cell - s, 0), ((cell - s) // 2, cell - s)]
    jitter = rng.integers(0, 2, size=(3, 2))

    def draw(d):
        for (x, y), (jx, jy) in zip(spots, jitter):
            x, y = min(x + int(jx), cell - s), min(y + int(jy), cell - s)
            SHAPE_DRAWERS[name](d, (x, y, x + s - 1, y + s - 1))

    return draw


# --- writing ------------------------------------------------------------------------------------


def _render_chunk(args) -> list[RenderedImage]:
    cfg, split, start, stop, image_dir = args
    out = []
    for index in range(start, stop):
        img, rec = render_image(cfg, split, index)
        img.save(Path(image_dir) / rec.file_name, format="PNG", optimize=False)
        out.append(rec)
    return out


def render_split(
    cfg: ShapesWorldConfig,
    split: str,
    n_images: int,
    image_dir: Path,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[RenderedImage]:
    """Render and save `n_images` PNGs into `image_dir`; returns the drawn objects per image."""
    image_dir.mkdir(parents=True, exist_ok=True)
    chunk = 500
    jobs = [(cfg, split, s, min(s + chunk, n_images), str(image_dir)) for s in range(0, n_images, chunk)]
    records: list[RenderedImage] = []
    if workers <= 1 or len(jobs) <= 1:
        results = map(_render_chunk, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_render_chunk, jobs)
    try:
        for part in results:
            records.extend(part)
            if progress:
                progress(len(records), n_images)
    finally:
        if pool:
            pool.shutdown()
    return records


def coco_document(cfg: ShapesWorldConfig, records: list[RenderedImage]) -> dict:
    """The eval split as a COCO instances document (detection format, no `isthing`: all are things)."""
    name_to_id = {name: cid for cid, name, _ in cfg.categories()}
    images, annotations = [], []
    for rec in records:
        images.append({"id": int(rec.image_id), "file_name": rec.file_name,
                       "width": cfg.image_size, "height": cfg.image_size, "license": 1})  # fmt: skip
        for obj in rec.objects:
            x, y, w, h = obj.bbox
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(rec.image_id),
                "category_id": name_to_id[obj.category], "bbox": [x, y, w, h], "area": obj.area,
                "iscrowd": int(obj.crowd), "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            })  # fmt: skip
    return {
        "info": {"description": "MIMIC shapes world (eval split)", "version": GENERATOR_VERSION,
                 "year": 2026, "contributor": "mimic_pipeline", "config_hash": cfg.hash},
        "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": parent} for cid, name, parent in cfg.categories()],
    }  # fmt: skip


def label_name(name: str) -> str:
    """OpenImages-style label id for a shapes-world class."""
    return f"/m/shapes_{name}"


def write_openimages_files(cfg: ShapesWorldConfig, records: list[RenderedImage], folder: Path) -> dict[str, Path]:
    """Write the train split as OpenImages V7 files; returns their paths by role."""
    size = float(cfg.image_size)
    paths = {
        "boxes": folder / "train-annotations-bbox.csv",
        "classes": folder / "class-descriptions-boxable.csv",
        "hierarchy": folder / "bbox_labels_hierarchy.json",
    }
    with open(paths["boxes"], "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(OPENIMAGES_BOX_HEADER)
        for rec in records:
            for obj in rec.objects:
                x, y, bw, bh = obj.bbox
                w.writerow([
                    rec.image_id, "xclick", label_name(obj.category), 1,
                    f"{x / size:.6f}", f"{(x + bw) / size:.6f}", f"{y / size:.6f}", f"{(y + bh) / size:.6f}",
                    0, 0, int(obj.crowd), 0, 0,
                ])  # fmt: skip
    with open(paths["classes"], "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")  # no header, exactly like OpenImages' file
        for parent, children in cfg.taxonomy.items():
            w.writerow([label_name(parent), parent])
            for child in children:
                w.writerow([label_name(child), child])
    hierarchy = {
        "LabelName": OPENIMAGES_ROOT,
        "Subcategory": [
            {"LabelName": label_name(parent), "Subcategory": [{"LabelName": label_name(c)} for c in children]}
            for parent, children in cfg.taxonomy.items()
        ],
    }
    paths["hierarchy"].write_text(json.dumps(hierarchy, indent=4) + "\n")
    return paths


@dataclass(frozen=True)
class ShapesWorldFiles:
    """Where a rendered shapes world lies; the same layout a user's real sources are described with."""

    root: Path

    @property
    def coco_annotations(self) -> Path:
        return self.root / "eval" / "instances_eval.json"

    @property
    def coco_images(self) -> Path:
        return self.root / "eval" / "images"

    @property
    def openimages_boxes(self) -> Path:
        return self.root / "train" / "train-annotations-bbox.csv"

    @property
    def openimages_classes(self) -> Path:
        return self.root / "train" / "class-descriptions-boxable.csv"

    @property
    def openimages_hierarchy(self) -> Path:
        return self.root / "train" / "bbox_labels_hierarchy.json"

    @property
    def openimages_images(self) -> Path:
        return self.root / "train" / "images"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"


@dataclass
class ShapesWorldResult:
    files: ShapesWorldFiles
    eval_images: list[RenderedImage]
    train_images: list[RenderedImage]
    manifest: dict


def build_shapes_world(
    cfg: ShapesWorldConfig,
    root: str | Path,
    workers: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> ShapesWorldResult:
    """Render both splits and write their annotation files under `root`, atomically.

    The whole folder is built beside `root` and swapped in at the end, so an interrupted build
    leaves the previous shapes world untouched.
    """
    cfg.validate()
    root = Path(root)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    with atomic_dir(root) as tmp:
        staged = ShapesWorldFiles(tmp)
        step = (lambda split: (lambda done, total: progress(split, done, total))) if progress else (lambda split: None)
        eval_recs = render_split(cfg, "eval", cfg.n_eval_images, staged.coco_images, workers, step("eval"))
        train_recs = render_split(cfg, "train", cfg.n_train_images, staged.openimages_images, workers, step("train"))
        if len({r.image_id for r in train_recs}) != len(train_recs):
            raise RuntimeError("two train images got the same OpenImages id; change the seed")
        staged.coco_annotations.write_text(json.dumps(coco_document(cfg, eval_recs)) + "\n")
        write_openimages_files(cfg, train_recs, staged.openimages_boxes.parent)
        manifest = {
            "generator_version": GENERATOR_VERSION,
            "config": cfg.to_dict(),
            "config_hash": cfg.hash,
            "counts": {
                split: {"images": len(recs), "objects": sum(len(r.objects) for r in recs),
                        "crowd_objects": sum(o.crowd for r in recs for o in r.objects)}
                for split, recs in (("eval", eval_recs), ("train", train_recs))
            },
            "files": {p.name: file_sha256(p) for p in (staged.coco_annotations, staged.openimages_boxes,
                                                        staged.openimages_classes, staged.openimages_hierarchy)},
        }  # fmt: skip
        staged.manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return ShapesWorldResult(ShapesWorldFiles(root), eval_recs, train_recs, manifest)


def contact_sheet(files: ShapesWorldFiles, out: str | Path, n: int = 16, scale: int = 3) -> Path:
    """A PNG grid of the first `n` eval images, enlarged, for a quick look in the Dagster UI."""
    paths = sorted(files.coco_images.glob("*.png"))[:n]
    if not paths:
        raise FileNotFoundError(f"no images under {files.coco_images}")
    first = Image.open(paths[0])
    w, h = first.size[0] * scale, first.size[1] * scale
    cols = min(8, len(paths))
    rows = math.ceil(len(paths) / cols)
    sheet = Image.new("RGB", (cols * (w + 2), rows * (h + 2)), (255, 255, 255))
    for k, p in enumerate(paths):
        with Image.open(p) as im:
            sheet.paste(im.resize((w, h), Image.NEAREST), ((k % cols) * (w + 2), (k // cols) * (h + 2)))
    out = Path(out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
