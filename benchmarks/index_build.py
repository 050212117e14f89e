"""Benchmark the annotation-index loaders (COCO instances JSON, OpenImages V7 box CSV).

Generates deterministic, realistically skewed inputs into a work folder (not timed), then runs each
loader `--runs` times, each run in a fresh interpreter so that every run starts cold (no warm
Python caches, no memory left over from the previous run) and reports its own peak RSS. The CSV
was just written, so it is read from the OS page cache: the numbers are parse + aggregate speed,
not disk speed. Linux only: peak memory is read from /proc.

    .venv/bin/python benchmarks/index_build.py            # default: COCO val2017 size, 2M OpenImages rows
    .venv/bin/python benchmarks/index_build.py --quick    # small smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from report import freebase_ids, markdown_table, peak_rss_kib, plain_table  # sibling module: scripts run as benchmarks/X.py

# the package of this checkout, not whatever `mimic_pipeline` the interpreter has installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEED = 20240601
OPENIMAGES_GOAL_ROWS_PER_S = 1_000_000

# COCO's 12 super-categories with their real number of classes (80 in all), in COCO's id order.
COCO_SUPERCATEGORIES = {
    "person": 1, "vehicle": 8, "outdoor": 5, "animal": 10, "accessory": 5, "sports": 10,
    "kitchen": 7, "food": 10, "furniture": 6, "electronic": 6, "appliance": 5, "indoor": 7,
}  # fmt: skip
# Detection ids run 1..90 with these ten left unused, exactly as in instances_val2017.json.
COCO_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_IMAGE_SIZES = [(640, 480), (640, 427), (480, 640), (640, 426), (500, 375), (427, 640), (640, 360)]
COCO_IMAGE_SIZE_P = [0.40, 0.20, 0.15, 0.10, 0.05, 0.05, 0.05]

OPENIMAGES_ROOT = "/m/0bl9f"  # OpenImages' "Entity" root; not itself a boxable class
OPENIMAGES_HEADER = (
    "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
)


# ---------------------------------------------------------------------------------------------
# Input generation (deterministic, not timed)
# ---------------------------------------------------------------------------------------------


def zipf_probabilities(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Zipf-like class frequencies over `n` classes, ranks in random order."""
    p = np.empty(n)
    p[rng.permutation(n)] = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


def boxes_per_image(rng: np.random.Generator, n_images: int, n_boxes: int, empty_share: float) -> np.ndarray:
    """Split `n_boxes` over images with a long tail: most images hold a few boxes, some dozens;
    `empty_share` of the images hold none."""
    has_boxes = rng.random(n_images) >= empty_share
    weights = rng.gamma(1.2, size=n_images) * has_boxes
    return has_boxes + rng.multinomial(n_boxes - has_boxes.sum(), weights / weights.sum())


def categories_with_repeats(
    rng: np.random.Generator, per_image: np.ndarray, p: np.ndarray, repeat: float
) -> np.ndarray:
    """One class per box; with probability `repeat` a box repeats the previous box's class in its
    image, as real images hold several people, cars, ... rather than independent draws."""
    n = int(per_image.sum())
    fresh = rng.choice(len(p), size=n, p=p)
    starts = np.concatenate([[0], np.cumsum(per_image)[:-1]])[per_image > 0]
    repeats = rng.random(n) < repeat
    repeats[starts] = False  # the first box of an image never copies the previous image's last box
    source = np.maximum.accumulate(np.where(repeats, 0, np.arange(n)))
    return fresh[source]


def write_coco(path: Path, n_images: int, n_boxes: int, seed: int) -> None:
    """A COCO instances JSON shaped like instances_val2017.json (polygons, crowd RLEs, skewed classes)."""
    rng = np.random.default_rng(seed)
    cat_ids = [i for i in range(1, 91) if i not in COCO_UNUSED_IDS]
    supers = [s for s, k in COCO_SUPERCATEGORIES.items() for _ in range(k)]
    categories = [{"supercategory": s, "id": i, "name": f"{s}_{i}"} for s, i in zip(supers, cat_ids, strict=True)]
    categories[0]["name"] = "person"

    image_ids = rng.choice(np.arange(1, 581_930), size=n_images, replace=False)  # val2017's id range
    sizes = np.array(COCO_IMAGE_SIZES)[rng.choice(len(COCO_IMAGE_SIZES), size=n_images, p=COCO_IMAGE_SIZE_P)]
    images = [
        {"license": int(rng.integers(1, 9)), "file_name": f"{i:012d}.jpg",
         "coco_url": f"http://images.cocodataset.org/val2017/{i:012d}.jpg", "height": int(h), "width": int(w),
         "date_captured": "2013-11-14 17:02:52", "flickr_url": f"http://farm4.staticflickr.com/{i}.jpg", "id": int(i)}
        for i, (w, h) in zip(image_ids, sizes, strict=True)
    ]  # fmt: skip

    # As in val2017: about 1% of images without boxes, person (id 1) 30% of all boxes and the other
    # classes a flatter Zipf tail (car, the next, has 5%).
    per_image = boxes_per_image(rng, n_images, n_boxes, empty_share=0.01)
    p = np.concatenate([[0.3], 0.7 * zipf_probabilities(rng, 79, 0.6)])
    cats = categories_with_repeats(rng, per_image, p, repeat=0.5)
    owner = np.repeat(np.arange(n_images), per_image)
    img_w, img_h = sizes[owner, 0].astype(float), sizes[owner, 1].astype(float)
    crowd = rng.random(n_boxes) < 0.01

    # Box sizes log-uniform from tiny to most of the image, aspect ratios around 1.
    area_frac = np.exp(rng.uniform(np.log(1e-4), np.log(0.6), n_boxes))
    aspect = np.exp(rng.normal(0.0, 0.5, n_boxes))
    bw = np.minimum(np.sqrt(area_frac * img_w * img_h * aspect), img_w - 1)
    bh = np.minimum(np.sqrt(area_frac * img_w * img_h / aspect), img_h - 1)
    bx, by = rng.uniform(0, img_w - bw), rng.uniform(0, img_h - bh)

    # Polygons: 6-60 points on a jittered ellipse inside the box, so the file is as heavy as COCO's.
    n_pts = rng.integers(6, 61, n_boxes)
    owner_pt = np.repeat(np.arange(n_boxes), n_pts)
    local = np.arange(owner_pt.size) - np.repeat(np.cumsum(n_pts) - n_pts, n_pts)
    theta = 2 * np.pi * local / n_pts[owner_pt]
    radius = rng.uniform(0.7, 1.0, owner_pt.size)
    px = bx[owner_pt] + bw[owner_pt] / 2 * (1 + radius * np.cos(theta))
    py = by[owner_pt] + bh[owner_pt] / 2 * (1 + radius * np.sin(theta))
    coords = np.round(np.column_stack([px, py]).ravel(), 2)
    polygons = np.split(coords, 2 * np.cumsum(n_pts)[:-1])

    annotations = []
    for k in rng.permutation(n_boxes):  # real files are not grouped by image
        if crowd[k]:
            h, w = int(img_h[k]), int(img_w[k])
            cuts = np.sort(rng.choice(h * w, size=2 * int(rng.integers(50, 300)), replace=False))
            segmentation = {"counts": np.diff(cuts, prepend=0, append=h * w).tolist(), "size": [h, w]}
        else:
            segmentation = [polygons[k].tolist()]
        annotations.append({
            "segmentation": segmentation, "area": round(float(0.75 * bw[k] * bh[k]), 2),
            "iscrowd": int(crowd[k]), "image_id": int(image_ids[owner[k]]),
            "bbox": [round(float(v), 2) for v in (bx[k], by[k], bw[k], bh[k])],
            "category_id": cat_ids[cats[k]], "id": 900_000 + int(k),
        })  # fmt: skip

    data = {
        "info": {"description": "synthetic COCO-sized benchmark input", "version": "1.0", "year": 2017},
        "licenses": [{"url": "http://creativecommons.org/licenses/", "id": i, "name": f"license {i}"}
                     for i in range(1, 9)],
        "images": images, "annotations": annotations, "categories": categories,
    }  # fmt: skip
    # json.dumps, not json.dump: only the one-shot form uses the C encoder (several times faster).
    path.write_text(json.dumps(data))


def write_openimages(folder: Path, n_rows: int, seed: int) -> dict[str, Path]:
    """OpenImages V7 box CSV, class descriptions and a 2-level hierarchy; returns paths by role."""
    rng = np.random.default_rng(seed)
    n_groups, n_classes = 60, 600
    labels = freebase_ids(rng, n_classes)
    groups, leaves = labels[:n_groups], labels[n_groups:]
    # Every group gets at least one leaf; 2% of leaves also sit under a second group, as in the real
    # hierarchy where a class can have two parents.
    group_of = np.concatenate([np.arange(n_groups), rng.integers(0, n_groups, len(leaves) - n_groups)])
    rng.shuffle(group_of)
    second = {int(i): int(rng.integers(0, n_groups)) for i in np.flatnonzero(rng.random(len(leaves)) < 0.02)}
    children: list[list[str]] = [[] for _ in range(n_groups)]
    for i, leaf in enumerate(leaves):
        children[group_of[i]].append(leaf)
        if i in second and second[i] != group_of[i]:
            children[second[i]].append(leaf)
    hierarchy = {
        "LabelName": OPENIMAGES_ROOT,
        "Subcategory": [
            {"LabelName": g, "Subcategory": [{"LabelName": c} for c in kids]}
            for g, kids in zip(groups, children, strict=True)
        ],
    }  # fmt: skip

    paths = {
        "boxes": folder / "train-annotations-bbox.csv",
        "classes": folder / "class-descriptions-boxable.csv",
        "hierarchy": folder / "bbox_labels_600_hierarchy.json",
    }
    paths["hierarchy"].write_text(json.dumps(hierarchy, indent=4) + "\n")
    with open(paths["classes"], "w") as f:  # no header, exactly like OpenImages' file
        f.writelines(f"{label},Class {k}\n" for k, label in enumerate(labels))

    # About 7.5 boxes per image (only images with boxes are in the file), the most frequent class
    # near 10% of boxes; images sorted by id and their boxes contiguous, as in the real file.
    n_images = max(1, min(n_rows, round(n_rows / 7.5)))
    raw_ids = np.unique(rng.integers(0, 2**64, size=n_images, dtype=np.uint64))
    per_image = boxes_per_image(rng, raw_ids.size, n_rows, empty_share=0.0)
    owner = np.repeat(np.arange(raw_ids.size), per_image)
    cats = categories_with_repeats(rng, per_image, zipf_probabilities(rng, n_classes, 0.9), repeat=0.45)

    def coord(values: np.ndarray) -> pa.Array:
        # decimal(7,6) prints fixed six decimals ("0.012500"), the way the official CSV does.
        return pc.round(pa.array(values), 6).cast(pa.decimal128(7, 6))

    def flag(p: float) -> np.ndarray:
        return (rng.random(n_rows) < p).astype(np.int8)

    x0, y0 = rng.uniform(0, 0.95, n_rows), rng.uniform(0, 0.95, n_rows)
    x1 = np.minimum(1.0, x0 + rng.uniform(0.01, 1.0, n_rows) * (1 - x0))
    y1 = np.minimum(1.0, y0 + rng.uniform(0.01, 1.0, n_rows) * (1 - y0))
    table = pa.table({
        "ImageID": pa.array([f"{i:016x}" for i in raw_ids.tolist()]).take(owner),
        "Source": pa.array(["xclick", "activemil"]).take(flag(0.15)),
        "LabelName": pa.array(labels).take(cats),
        "Confidence": np.ones(n_rows, np.int8),
        "XMin": coord(x0), "XMax": coord(x1), "YMin": coord(y0), "YMax": coord(y1),
        "IsOccluded": flag(0.55), "IsTruncated": flag(0.25), "IsGroupOf": flag(0.05),
        "IsDepiction": flag(0.05), "IsInside": flag(0.01),
    })  # fmt: skip
    # Arrow's writer quotes header names even with quoting_style="none"; OpenImages' header is bare.
    with open(paths["boxes"], "wb") as f:
        f.write((OPENIMAGES_HEADER + "\n").encode())
        pa_csv.write_csv(table, f, pa_csv.WriteOptions(include_header=False, quoting_style="none"))
    return paths


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


def run_child(spec: str) -> None:
    """Child side: run one loader once and print its timing, row counts and peak RSS as JSON."""
    from mimic_pipeline.core.annotations import load_coco, load_openimages

    job = json.loads(spec)
    loader = {"coco": load_coco, "openimages": load_openimages}[job["loader"]]
    baseline_kib = peak_rss_kib()  # interpreter + imports
    start = time.perf_counter()
    index = loader(**job["kwargs"])
    seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds,
        "row_counts": index.row_counts(),
        "boxes": pc.sum(index.instance_counts["count"]).as_py() or 0,
        "peak_kib": peak_rss_kib(),
        "baseline_kib": baseline_kib,
    }))  # fmt: skip


@dataclass
class Result:
    name: str
    box_rows: int
    images: int
    seconds: list[float]
    peak_mib: float
    baseline_mib: float
    goal_rows_per_s: int | None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rows_per_s(self) -> float:
        return self.box_rows / self.median


def measure(name: str, loader: str, kwargs: dict, box_rows: int, runs: int, goal: int | None) -> Result:
    spec = json.dumps({"loader": loader, "kwargs": kwargs})
    reports = []
    for run in range(1, runs + 1):
        done = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name}: loader run {run} failed:\n{done.stderr}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        # The index must account for every generated box, or the timing measured a wrong result.
        if report["boxes"] != box_rows:
            sys.exit(f"{name}: index counts {report['boxes']} boxes, the input has {box_rows}")
        reports.append(report)
        print(f"  {name} run {run}/{runs}: {report['seconds']:.3f} s", file=sys.stderr)
    return Result(
        name=name, box_rows=box_rows, images=reports[0]["row_counts"]["images"],
        seconds=[r["seconds"] for r in reports], peak_mib=max(r["peak_kib"] for r in reports) / 1024,
        baseline_mib=max(r["baseline_kib"] for r in reports) / 1024, goal_rows_per_s=goal,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

COLUMNS = ["input", "box rows", "images", "median s (min-max)", "rows/s", "peak RSS MiB", "goal", "met?"]
RIGHT_ALIGNED = {"box rows", "images", "median s (min-max)", "rows/s", "peak RSS MiB"}


def table_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        goal = f">= {r.goal_rows_per_s:,} rows/s" if r.goal_rows_per_s else "report only"
        met = "-" if r.goal_rows_per_s is None else ("yes" if r.rows_per_s >= r.goal_rows_per_s else "NO")
        rows.append([
            r.name, f"{r.box_rows:,}", f"{r.images:,}",
            f"{r.median:.3f} ({min(r.seconds):.3f}-{max(r.seconds):.3f})",
            f"{r.rows_per_s:,.0f}", f"{r.peak_mib:,.0f}", goal, met,
        ])  # fmt: skip
    return rows


def machine_line(load_at_start: float) -> str:
    # The load average tells whether other work shared the CPUs: on a busy 2-core machine the
    # DuckDB-parallel OpenImages loader can lose a third of its speed.
    return (f"machine: {len(os.sched_getaffinity(0))} CPUs ({platform.machine()}), "
            f"Python {platform.python_version()}, DuckDB {duckdb.__version__}, "
            f"load average {load_at_start:.2f} at start")  # fmt: skip


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke run: 1 run, 1/10 COCO, 100k OpenImages rows")
    ap.add_argument("--runs", type=int, help="runs per loader, each in a fresh process (default 3; 1 with --quick)")
    ap.add_argument("--oi-rows", type=int, help="OpenImages box rows (default 2,000,000; 100,000 with --quick)")
    ap.add_argument("--workdir", type=Path, help="where inputs are written (default: a temp dir, removed afterwards)")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measured loader run
    args = ap.parse_args()
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.oi_rows is None:
        args.oi_rows = 100_000 if args.quick else 2_000_000
    if args.runs < 1 or args.oi_rows < 1:
        ap.error("--runs and --oi-rows must be positive")
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        run_child(args.child)
        return

    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    coco_images, coco_boxes = (500, 3_600) if args.quick else (5_000, 36_000)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="index_build_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        print(f"generating inputs in {workdir} ...", file=sys.stderr)
        coco_path = workdir / "instances_val2017.json"
        write_coco(coco_path, coco_images, coco_boxes, SEED)
        oi = write_openimages(workdir, args.oi_rows, SEED + 1)
        generated = time.perf_counter() - started
        print(f"  generated in {generated:.1f} s (COCO {coco_path.stat().st_size / 2**20:.0f} MiB, "
              f"OpenImages CSV {oi['boxes'].stat().st_size / 2**20:.0f} MiB)", file=sys.stderr)  # fmt: skip

        results = [
            measure("COCO instances JSON", "coco",
                    {"annotations": str(coco_path), "source": "coco", "split": "val2017"},
                    coco_boxes, args.runs, goal=None),
            measure("OpenImages box CSV", "openimages",
                    {"boxes": str(oi["boxes"]), "class_descriptions": str(oi["classes"]),
                     "hierarchy": str(oi["hierarchy"]), "source": "openimages", "split": "train"},
                    args.oi_rows, args.runs, goal=OPENIMAGES_GOAL_ROWS_PER_S),
        ]  # fmt: skip
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = table_rows(results)
    print(machine_line(load_at_start))
    print(f"{args.runs} run(s) per loader, each in a fresh process; seconds time the loader call only")
    print()
    print(plain_table(COLUMNS, rows, RIGHT_ALIGNED))
    if args.markdown:
        print()
        print(markdown_table(COLUMNS, rows, RIGHT_ALIGNED))
    print()
    baselines = ", ".join(f"{r.name} {r.baseline_mib:.0f} MiB" for r in results)
    print(f"peak RSS includes the interpreter and imports (before the call: {baselines})")
    print(f"total wall time {time.perf_counter() - started:.1f} s (input generation {generated:.1f} s)")


if __name__ == "__main__":
    main()
