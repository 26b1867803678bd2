-- One row per (minute, merchant_category, country, channel): how many transactions and how much.
-- Ratios (flagged rate) belong in the dashboard: divide flagged_minutely by this.
{{
    config(
        indexes=[
            {'columns': ['minute']},
        ],
    )
}}

with

stg_transactions as (
    select * from {{ ref('stg_transactions') }}
),

bucketed as (
    select
        date_trunc('minute', event_time) as minute,
        merchant_category,
        country,
        channel,
        amount
    from stg_transactions
)

select
    minute,
    merchant_category,
    country,
    channel,
    count(*) as txn_count,
    sum(amount) as amount_total
from bucketed
group by
    minute,
    merchant_category,
    country,
    channel
