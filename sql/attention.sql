-- Where attention goes, per checkpoint and LM layer, on a fixed sample of eval items (core/attention.py).
create table if not exists attention_stats (
    checkpoint varchar not null,
    layer      integer not null,
    kind       varchar not null,   -- vision_query: where vision tokens look; final_text: where the answering token looks
    target     varchar not null,   -- own_image / other_images / text; or image_0, image_1 ... / text
    share      double not null,    -- mean share of attention (over heads, then queries); sums to 1 per kind and layer
    n          bigint not null     -- queries averaged
);

-- name: cross_image_by_layer
select layer, round(100 * share, 2) as other_images_pct, n
from attention_stats where checkpoint = $checkpoint and kind = 'vision_query' and target = 'other_images'
order by layer;
