-- Summaries of the item sets and baselines, printed by `mimic demo`.

-- name: items_overview
with sets as (
    select 'eval' as purpose, task, count(*) as items, count(distinct (axis, axis_value)) as cells,
           round(avg(n_images), 1) as mean_images
    from eval_items group by all
    union all
    select 'train', task, count(*), count(distinct (axis, axis_value)), round(avg(n_images), 1)
    from train_items group by all
    union all
    select 'single_image', task, count(*), 1, 1.0 from single_image_items group by all
),
baseline as (
    select task, checkpoint, round(100 * sum(value * n) / sum(n), 1) as accuracy
    from eval_metrics
    where metric = 'accuracy' and axis_value = 'all' and variant = 'default'
    group by all
)
select s.*,
       (select accuracy from baseline b where b.task = s.task and b.checkpoint = 'oracle' and s.purpose = 'eval') as oracle,
       (select accuracy from baseline b where b.task = s.task and b.checkpoint = 'majority' and s.purpose = 'eval') as majority,
       (select accuracy from baseline b where b.task = s.task and b.checkpoint = 'random' and s.purpose = 'eval') as random
from sets s
order by purpose, task;
