-- One row per card: how much it has been used, and when first and last.
{{
    config(
        indexes=[
            {'columns': ['card_id'], 'unique': true},
        ],
    )
}}

with

stg_transactions as (
    select * from {{ ref('stg_transactions') }}
)

select
    card_id,
    count(*) as txn_count,
    sum(amount) as amount_total,
    max(amount) as amount_max,
    min(event_time) as first_seen_at,
    max(event_time) as last_seen_at
from stg_transactions
group by card_id
