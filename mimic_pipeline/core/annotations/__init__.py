"""Annotation loaders (COCO JSON, OpenImages CSV + hierarchy) into one normalized index."""

from .coco import load_coco
from .index import INDEX_TABLES, AnnotationIndex, concat_indexes
from .openimages import load_openimages
from .sources import CocoFiles, OpenImagesFiles, load_source, shapes_world_parts

__all__ = [
    "INDEX_TABLES", "AnnotationIndex", "CocoFiles", "OpenImagesFiles", "concat_indexes",
    "load_coco", "load_openimages", "load_source", "shapes_world_parts",
]  # fmt: skip
