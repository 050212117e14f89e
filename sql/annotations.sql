-- The normalized annotation index: one set of rows per source (coco, openimages, shapes, ...).
-- Ids are strings in every source. A source is replaced as a whole, inside one transaction.

create table if not exists categories (
    source      varchar not null,
    category_id varchar not null,
    name        varchar not null,
    parent      varchar,            -- parent's name (COCO super-category / OpenImages parent class); NULL at the top
    is_thing    boolean not null    -- stuff categories (COCO panoptic) are listed but never counted
);

create table if not exists images (
    source    varchar not null,
    split     varchar not null,
    image_id  varchar not null,
    file_name varchar not null,
    width     integer,              -- NULL where the format does not say and images were not read
    height    integer
);

create table if not exists instance_counts (
    source      varchar not null,
    split       varchar not null,
    image_id    varchar not null,
    category_id varchar not null,
    count       integer not null,   -- every box of the category in the image, crowd/group boxes included
    crowd       boolean not null    -- any of those boxes is a crowd (iscrowd) or group (IsGroupOf) box
);

-- One row per index build: what was read, when, and how much came out (lineage for every source).
create table if not exists annotation_builds (
    source         varchar not null,
    built_at       timestamp not null,
    source_files   json not null,
    notes          json not null,
    config_hash    varchar,
    n_categories   bigint not null,
    n_images       bigint not null,
    n_count_rows   bigint not null
);
