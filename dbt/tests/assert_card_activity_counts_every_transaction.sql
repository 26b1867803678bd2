-- card_activity accounts for every source transaction exactly once: per card, the count and the
-- total match the staging rows. Rows returned are cards whose figures disagree.
with

transactions as (
    select * from {{ ref('stg_transactions') }}
),

expected as (
    select
        card_id,
        count(*) as txn_count,
        sum(amount) as amount_total
    from transactions
    group by card_id
),

card_activity as (
    select * from {{ ref('card_activity') }}
)

select
    coalesce(expected.card_id, card_activity.card_id) as card_id,
    expected.txn_count as expected_txn_count,
    card_activity.txn_count as actual_txn_count
from expected
full outer join card_activity
    on expected.card_id = card_activity.card_id
where expected.card_id is null
    or card_activity.card_id is null
    or expected.txn_count <> card_activity.txn_count
    or expected.amount_total <> card_activity.amount_total
