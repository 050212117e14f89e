-- Validity of one source's index; each query returns the offending rows (none when the check passes).
-- $source is bound as a parameter. Queried by name from the Dagster asset checks and the tests.

-- name: orphan_annotations
select c.split, c.image_id, c.category_id
from instance_counts c
anti join images i on i.source = c.source and i.split = c.split and i.image_id = c.image_id
where c.source = $source;

-- name: unknown_categories
select distinct c.category_id
from instance_counts c
anti join categories k on k.source = c.source and k.category_id = c.category_id
where c.source = $source;

-- name: non_positive_counts
select split, image_id, category_id, count
from instance_counts
where source = $source and count < 1;
