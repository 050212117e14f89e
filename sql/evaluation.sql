-- Results of every answerer (reference baselines now, checkpoints later), per cell of the benchmark.
create table if not exists eval_metrics (
    checkpoint  varchar not null,   -- a checkpoint name, or oracle / majority / random
    variant     varchar not null,   -- evaluation-time variant (pooling factor, pixel control ...); default
    task        varchar not null,
    axis        varchar not null,   -- the study
    axis_value  varchar not null,   -- the cell, or 'all' for the whole study
    metric      varchar not null,   -- accuracy; listing also micro_precision/recall/f1, mean_item_f1
    value       double,
    n           bigint not null,
    ci_low      double,             -- 95% interval: Wilson for accuracy, bootstrap for mean_item_f1
    ci_high     double,
    unparseable bigint not null
);

-- One row per answerer (checkpoint or baseline) and variant: the MIMIC average over the four tasks and
-- each task's score, where a task's score is the mean over its studies of the study's score (accuracy;
-- mean per-item F1 for Listing), in percent.
create or replace view leaderboard as
with task_scores as (
    select checkpoint, variant, task, avg(value) as score, sum(n) as n
    from eval_metrics
    where axis_value = 'all' and task in ('counting', 'listing', 'common', 'odd_one')
      and metric = case when task = 'listing' then 'mean_item_f1' else 'accuracy' end
    group by all
)
select checkpoint, variant,
       round(100 * avg(score), 1) as mimic_average,
       round(100 * max(score) filter (where task = 'counting'), 1) as counting,
       round(100 * max(score) filter (where task = 'listing'), 1) as listing,
       round(100 * max(score) filter (where task = 'common'), 1) as common,
       round(100 * max(score) filter (where task = 'odd_one'), 1) as odd_one,
       count(*) as tasks, sum(n) as items
from task_scores
group by all
order by mimic_average desc, checkpoint, variant;

-- name: baseline_summary
select checkpoint, axis, axis_value, round(100 * value, 1) as accuracy, n, round(100 * ci_low, 1) as ci_low,
       round(100 * ci_high, 1) as ci_high
from eval_metrics
where task = $task and metric = 'accuracy' and variant = 'default' and axis_value = 'all'
order by axis, checkpoint;

-- name: checkpoint_summary
select variant, axis, round(100 * value, 1) as accuracy, n, round(100 * ci_low, 1) as ci_low,
       round(100 * ci_high, 1) as ci_high
from eval_metrics
where checkpoint = $checkpoint and task = $task and metric = 'accuracy' and axis_value = 'all'
order by variant, axis;

-- name: leaderboard
select * from leaderboard;
