"""Resources: where artefacts go, and where the user's annotation files are."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from ..core.annotations import CocoFiles, OpenImagesFiles, shapes_world_parts
from ..core.catalog import catalog_path
from ..core.shapes_world import ShapesWorldFiles

DEFAULT_DATA_DIR = "data"


class MimicPaths(dg.ConfigurableResource):
    """The data folder: DuckDB catalogue, rendered sources, Parquet indexes and later artefacts.

    Defaults to `$MIMIC_DATA_DIR`, else `./data` (git-ignored).
    """

    data_dir: str = DEFAULT_DATA_DIR

    @property
    def root(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def catalog(self) -> Path:
        return catalog_path(self.root)

    def source_dir(self, source: str) -> Path:
        return self.root / "sources" / source

    def index_dir(self, source: str) -> Path:
        return self.root / "index" / source

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def checkpoints(self) -> Path:
        """Checkpoint directories; a folder counts once its DONE marker exists."""
        return self.root / "checkpoints"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"


class AnnotationSources(dg.ConfigurableResource):
    """Where the user's real annotation files are. Unset paths mean "source not configured".

    Each field defaults to an environment variable (`MIMIC_COCO_ANNOTATIONS`, ...; see README) and can
    be overridden per run in the Launchpad under `resources.sources.config`.
    """

    coco_annotations: str | None = None
    coco_images: str | None = None
    coco_split: str = "val2017"
    coco_require_images: bool = False
    openimages_boxes: str | None = None
    openimages_classes: str | None = None
    openimages_hierarchy: str | None = None
    openimages_images: str | None = None
    openimages_split: str = "train"
    openimages_image_ext: str = ".jpg"
    openimages_require_images: bool = False

    @classmethod
    def from_env(cls) -> AnnotationSources:
        env = os.environ.get
        return cls(
            coco_annotations=env("MIMIC_COCO_ANNOTATIONS"),
            coco_images=env("MIMIC_COCO_IMAGES"),
            coco_require_images=bool(env("MIMIC_COCO_IMAGES")),
            openimages_boxes=env("MIMIC_OPENIMAGES_BOXES"),
            openimages_classes=env("MIMIC_OPENIMAGES_CLASSES"),
            openimages_hierarchy=env("MIMIC_OPENIMAGES_HIERARCHY"),
            openimages_images=env("MIMIC_OPENIMAGES_IMAGES"),
            openimages_require_images=bool(env("MIMIC_OPENIMAGES_IMAGES")),
        )

    def configured(self, source: str) -> bool:
        if source == "shapes":
            return True
        if source == "coco":
            return bool(self.coco_annotations)
        if source == "openimages":
            return bool(self.openimages_boxes and self.openimages_classes and self.openimages_hierarchy)
        return False

    def image_root(self, source: str, split: str, paths: MimicPaths) -> str:
        """The folder an item's image paths start from (empty when the user gave no image folder)."""
        if source == "shapes":
            world = ShapesWorldFiles(paths.source_dir("shapes"))
            return str({"eval": world.coco_images, "train": world.openimages_images}[split])
        return {"coco": self.coco_images, "openimages": self.openimages_images}.get(source) or ""

    def parts(self, source: str, paths: MimicPaths) -> list[CocoFiles | OpenImagesFiles]:
        """The file sets of `source`; raises with the settings to make when it is not configured."""
        if source == "shapes":
            return shapes_world_parts(paths.source_dir("shapes"))
        if not self.configured(source):
            needed = {
                "coco": "MIMIC_COCO_ANNOTATIONS (and MIMIC_COCO_IMAGES to check the images)",
                "openimages": "MIMIC_OPENIMAGES_BOXES, MIMIC_OPENIMAGES_CLASSES and MIMIC_OPENIMAGES_HIERARCHY",
            }.get(source, "a loader for it in AnnotationSources.parts")
            raise dg.Failure(
                description=f"source {source!r} is not configured: set {needed}, or fill "
                f"resources.sources.config in the Launchpad, then materialize this partition again"
            )
        if source == "coco":
            return [CocoFiles(self.coco_annotations, self.coco_images, self.coco_split, self.coco_require_images)]
        return [OpenImagesFiles(self.openimages_boxes, self.openimages_classes, self.openimages_hierarchy,
                                self.openimages_images, self.openimages_split, self.openimages_image_ext,
                                self.openimages_require_images)]  # fmt: skip
