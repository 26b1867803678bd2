-- One row per (minute, rule, merchant_category, country): how many flags and how much they
-- amount to. A transaction flagged by two rules counts once under each.
{{
    config(
        indexes=[
            {'columns': ['minute']},
        ],
    )
}}

with

flagged as (
    select * from {{ ref('flagged_transactions') }}
),

bucketed as (
    select
        date_trunc('minute', event_time) as minute,
        rule,
        merchant_category,
        country,
        amount
    from flagged
)

select
    minute,
    rule,
    merchant_category,
    country,
    count(*) as flagged_count,
    sum(amount) as flagged_amount
from bucketed
group by
    minute,
    rule,
    merchant_category,
    country
