-- The checkpoint registry: every complete checkpoint in the checkpoints folder (the `checkpoints` asset
-- rewrites it from the folder, so checkpoints a user copies in are listed next to those trained here).
create table if not exists checkpoints (
    name                 varchar not null,   -- the folder name; also the `checkpoint` partition key
    recipe               varchar not null,   -- base / full_ft / lora / lora_masked, or external
    parent               varchar,            -- the checkpoint it was trained from (NULL: from scratch or external)
    path                 varchar not null,
    created              varchar,            -- UTC, ISO 8601 (the DONE marker's time)
    config_hash          varchar,            -- hash of the recipe config
    data_version         varchar,            -- version of the training sets it saw
    steps                bigint,
    trainable_parameters bigint,
    architecture         varchar,            -- llava_onevision / qwen2_vl
    heldout_before       double,             -- % of its held-out items answered right by the parent (fine-tunes)
    heldout_after        double              -- ... and by this checkpoint (single-image items for base)
);

-- name: checkpoint_overview
select name, recipe, parent, steps, trainable_parameters, heldout_before, heldout_after
from checkpoints order by created, name;
