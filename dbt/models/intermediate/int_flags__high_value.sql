-- high_value: t.amount > high_value_min_amount (DESIGN.md; default 2000.00).
{{ config(unique_key='txn_id') }}

with

stg_transactions as (
    select * from {{ ref('stg_transactions') }}
),

flagged as (
    select
        {{ sentinel_flag_columns("cast('high_value' as text) as rule") }},
        cast(
            case
                when amount > 5 * {{ var('high_value_min_amount') }} then 'high'
                else 'medium'
            end as text
        ) as risk_level,
        {{ sentinel_format_amount('amount') }} || ' ' || currency
            || ' over the {{ sentinel_amount_label(var("high_value_min_amount")) }} limit' as reason
    from stg_transactions
    where amount > {{ var('high_value_min_amount') }}
)

select * from flagged
