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

-- name: baseline_summary
select checkpoint, axis, axis_value, round(100 * value, 1) as accuracy, n, round(100 * ci_low, 1) as ci_low,
       round(100 * ci_high, 1) as ci_high
from eval_metrics
where task = $task and metric = 'accuracy' and variant = 'default' and axis_value = 'all'
order by axis, checkpoint;
