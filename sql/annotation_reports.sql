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
