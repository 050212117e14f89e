-- Re-derive every item's answer from the catalogue, independently of the Python samplers.
-- Each query reads a relation `items` (one task's items) and returns the items that break a rule
-- (no rows = valid). Category names join items to the index; `categories` may list a name under
-- several ids (the shapes world's COCO and OpenImages splits), only the split's own rows match.

-- The hierarchy as the checks read it, made once per check run (temp views on a read-only connection):
-- `above` (every name with every name above it), `things` (one row per thing category id and name; a
-- class with two parents has two `categories` rows), `kinds` (a parent's leaf children), and
-- `parent_holdings` (for Listing / Odd-One items: every category each image holds, whether it is one of
-- the asked parent's kinds, and whether it lies below that parent at all).

-- name: _prelude
create temp view above as
with recursive up(source, name, ancestor) as (
    select distinct source, name, parent from categories where parent is not null and parent <> name
    union
    select a.source, a.name, k.parent
    from up a join categories k on k.source = a.source and k.name = a.ancestor and k.parent is not null and k.parent <> k.name
)
select * from up;
create temp view things as select distinct source, category_id, name from categories where is_thing;
create temp view kinds as
select distinct k.source, k.parent, k.name from categories k
where k.parent is not null and k.parent <> k.name
  and not exists (select 1 from categories c where c.source = k.source and c.parent = k.name and c.name <> k.name);
create temp view parent_holdings as
with per_image as (
    select item_id, source, split, query[1] as parent, len(image_ids) as n,
           unnest(image_ids) as image_id, unnest(image_roles) as role
    from items
)
select p.item_id, p.n, p.image_id, p.role, t.name,
       exists (select 1 from kinds d where d.source = p.source and d.parent = p.parent and d.name = t.name) as is_kind,
       t.name = p.parent
         or exists (select 1 from above a where a.source = p.source and a.name = t.name and a.ancestor = p.parent) as below
from per_image p
join instance_counts c on c.source = p.source and c.split = p.split and c.image_id = p.image_id
join things t on t.source = c.source and t.category_id = c.category_id;

-- name: repeated_images
select item_id, image_ids from items where len(list_distinct(image_ids)) <> len(image_ids);

-- name: counting
-- the total re-derived; crowd boxes of a queried class, distractors holding it, and boxes of any class
-- above it in the hierarchy ("Bird" for an "Eagle" count) all flag the item
with per_image as (
    select item_id, answer, source, split, unnest(image_ids) as image_id, unnest(image_roles) as role, query
    from items
),
queried as (select *, unnest(query) as name from per_image),
per_class as (
    select q.item_id, q.answer, q.image_id, q.role, q.name,
           coalesce(sum(c.count), 0) as n, coalesce(bool_or(c.crowd), false) as crowd
    from queried q
    left join things k on k.source = q.source and k.name = q.name
    left join instance_counts c
      on c.source = q.source and c.split = q.split and c.image_id = q.image_id and c.category_id = k.category_id
    group by all
),
ancestor_boxes as (
    select distinct q.item_id
    from queried q
    join above a on a.source = q.source and a.name = q.name
    join things k on k.source = q.source and k.name = a.ancestor
    join instance_counts c
      on c.source = q.source and c.split = q.split and c.image_id = q.image_id and c.category_id = k.category_id
)
select item_id, any_value(answer) as answer, sum(n) as derived, bool_or(crowd) as crowd_image,
       bool_or(role = 'distractor' and n > 0) as distractor_holds_class,
       item_id in (select item_id from ancestor_boxes) as ancestor_box
from per_class
group by item_id
having derived::varchar <> any_value(answer) or bool_or(crowd) or bool_or(role = 'distractor' and n > 0)
    or item_id in (select item_id from ancestor_boxes);

-- name: listing
-- the kinds of a parent are its leaf children; an image holding the parent class itself, or anything
-- else below it ("Fruit" or "Pear" for a Listing of "Food"), flags the item
with derived as (
    select item_id,
           array_to_string(list_sort(list_distinct(list(name) filter (where is_kind))), ', ') as derived,
           bool_or(role = 'distractor' and is_kind) as distractor_holds_kind,
           bool_or(below and not is_kind) as ambiguous_image
    from parent_holdings group by item_id
)
select i.item_id, i.answer, d.derived, d.distractor_holds_kind, d.ambiguous_image
from items i left join derived d using (item_id)
where coalesce(d.derived, '') is distinct from i.answer or d.distractor_holds_kind or d.ambiguous_image;

-- name: common
with per_image as (
    select item_id, source, split, len(image_ids) as n, unnest(image_ids) as image_id from items
),
present as (
    select distinct p.item_id, p.n, p.image_id, k.name
    from per_image p
    join instance_counts c on c.source = p.source and c.split = p.split and c.image_id = p.image_id
    join categories k on k.source = c.source and k.category_id = c.category_id and k.is_thing
),
in_all as (
    select item_id, list_sort(list(name)) as names
    from (select item_id, name from present group by item_id, name, n having count(*) = any_value(n))
    group by item_id
)
select i.item_id, i.answer, a.names
from items i left join in_all a using (item_id)
where a.names is distinct from [i.answer];

-- name: odd_one
-- exactly one kind of the parent in fewer than half the images (the answer), every other kind present
-- in more than half, no image holding the parent class or anything else below it
with presence as (
    select item_id, any_value(n) as n, name, count(distinct image_id) as images
    from parent_holdings where is_kind group by item_id, name
),
derived as (
    select item_id, list_sort(list(name) filter (where images < n / 2)) as minority,
           bool_and(images < n / 2 or images > n / 2) as no_tie
    from presence group by item_id
),
ambiguous as (select distinct item_id from parent_holdings where below and not is_kind)
select i.item_id, i.answer, d.minority, i.item_id in (select item_id from ambiguous) as ambiguous_image
from items i left join derived d using (item_id)
where d.minority is distinct from [i.answer] or not d.no_tie or i.item_id in (select item_id from ambiguous);

-- name: train_eval_overlap
-- train images (relation `items`) that also serve in an eval item (view `eval_items`)
select distinct t.source, t.image_id
from (select source, unnest(image_ids) as image_id from items) t
join (select source, unnest(image_ids) as image_id from eval_items) e using (source, image_id)
limit 20;

-- name: presence
-- single-image yes/no questions: "yes" exactly when the image holds the class
with asked as (select item_id, answer, source, split, image_ids[1] as image_id, query[1] as name from items),
derived as (
    select a.item_id, a.answer, case when count(c.category_id) > 0 then 'yes' else 'no' end as derived
    from asked a
    left join categories k on k.source = a.source and k.name = a.name and k.is_thing
    left join instance_counts c
      on c.source = a.source and c.split = a.split and c.image_id = a.image_id and c.category_id = k.category_id
    group by all
)
select * from derived where derived <> answer;
