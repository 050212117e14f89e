"""Where a source's annotation files lie, and how to load them: configured, not coded.

A source is a name (``coco``, ``openimages``, ``shapes`` ...) and one or more file sets, each a split
in one of the two formats. The shapes world is simply a source with a COCO eval split and an
OpenImages train split that the project renders itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..shapes_world import ShapesWorldFiles
from .coco import load_coco
from .index import AnnotationIndex, concat_indexes
from .openimages import load_openimages


@dataclass(frozen=True)
class CocoFiles:
    """A COCO instances JSON (e.g. instances_val2017.json) and, optionally, its image folder."""

    annotations: str
    images: str | None = None
    split: str = "val2017"
    require_images: bool = False

    def load(self, source: str) -> AnnotationIndex:
        return load_coco(self.annotations, source, self.split, self.images, self.require_images)


@dataclass(frozen=True)
class OpenImagesFiles:
    """OpenImages box CSV + class descriptions + hierarchy JSON and, optionally, the image folder."""

    boxes: str
    classes: str
    hierarchy: str
    images: str | None = None
    split: str = "train"
    image_ext: str = ".jpg"
    require_images: bool = False

    def load(self, source: str) -> AnnotationIndex:
        return load_openimages(self.boxes, self.classes, self.hierarchy, source, self.split,
                               self.images, self.image_ext, self.require_images)  # fmt: skip


def load_source(source: str, parts: list[CocoFiles | OpenImagesFiles]) -> AnnotationIndex:
    """Load every split of a source and join them into one index."""
    if not parts:
        raise ValueError(f"source {source!r} has no files configured")
    indexes = [p.load(source) for p in parts]
    return indexes[0] if len(indexes) == 1 else concat_indexes(source, indexes)


def shapes_world_parts(root: str | Path) -> list[CocoFiles | OpenImagesFiles]:
    """The shapes world as a source: COCO-format eval split + OpenImages-format train split."""
    f = ShapesWorldFiles(Path(root))
    return [
        CocoFiles(str(f.coco_annotations), str(f.coco_images), split="eval", require_images=True),
        OpenImagesFiles(str(f.openimages_boxes), str(f.openimages_classes), str(f.openimages_hierarchy),
                        str(f.openimages_images), split="train", image_ext=".png", require_images=True),
    ]  # fmt: skip
