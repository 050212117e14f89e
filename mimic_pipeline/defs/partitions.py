"""Partition sets shared by the assets."""

import dagster as dg

from ..core.sampling.config import TASKS

# Annotation sources. `shapes` is the embedded default; `coco` and `openimages` are the user's real
# files, configured through the `sources` resource (see README, "Bring your own data").
SOURCES = ["shapes", "coco", "openimages"]
source_partitions = dg.StaticPartitionsDefinition(SOURCES)

# MIMIC tasks: eval sets, training sets and baseline scores are partitioned by task.
task_partitions = dg.StaticPartitionsDefinition(list(TASKS))

# Checkpoints: one key per checkpoint directory (added by the training assets, the `checkpoints`
# registry and the checkpoint sensor); evaluation is partitioned by checkpoint x task.
checkpoint_partitions = dg.DynamicPartitionsDefinition(name="checkpoint")
