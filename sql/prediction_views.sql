-- Views over the prediction Parquet files ({root} is the predictions folder, filled in by
-- catalog.create_parquet_views). One assembled file per answerer and task: predictions/<answerer>/<task>.parquet
-- (a checkpoint, or a reference baseline: oracle / majority / random). The resumable parts live one level deeper.
create or replace view predictions as select * from read_parquet('{root}/*/*.parquet', union_by_name = true);
