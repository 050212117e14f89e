-- Summaries of one source's index ($source bound as a parameter), shown in the Dagster UI.

-- name: category_summary
select c.split, k.name as category, k.parent,
       count(*) as images, sum(c.count) as instances, sum(c.crowd::int) as crowd_images
from instance_counts c
join (select distinct source, category_id, name, first(parent order by parent nulls last) as parent
      from categories group by all) k
  on k.source = c.source and k.category_id = c.category_id
where c.source = $source
group by all
order by c.split, instances desc, category
limit 30;

-- name: index_overview
select b.source, i.split, count(distinct i.image_id) as images,
       (select count(*) from instance_counts c where c.source = i.source and c.split = i.split) as count_rows,
       (select sum(count) from instance_counts c where c.source = i.source and c.split = i.split) as boxes,
       (select count(*) from instance_counts c where c.source = i.source and c.split = i.split and c.crowd) as crowd_rows
from images i
join (select source, max(built_at) as built_at from annotation_builds group by source) b on b.source = i.source
group by all
order by 1, 2;
