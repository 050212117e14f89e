-- Views over the item Parquet files ({root} is the datasets folder, filled in by catalog.create_item_views).
create or replace view eval_items as select * from read_parquet('{root}/eval/*.parquet', union_by_name = true);
create or replace view train_items as select * from read_parquet('{root}/train/*.parquet', union_by_name = true);
create or replace view single_image_items as select * from read_parquet('{root}/single_image/*.parquet', union_by_name = true);
