"""Partition sets shared by the assets."""

import dagster as dg

# Annotation sources. `shapes` is the embedded default; `coco` and `openimages` are the user's real
# files, configured through the `sources` resource (see README, "Bring your own data").
SOURCES = ["shapes", "coco", "openimages"]
source_partitions = dg.StaticPartitionsDefinition(SOURCES)
