-- card_testing: a burst of small amounts on one card, as fraudsters probe a stolen card before
-- using it. t has amount <= card_testing_max_amount and at least card_testing_min_txns such small
-- transactions of t's card (t included) have event_time in [t.event_time - window, t.event_time].
with

stg_transactions as (
    select * from {{ ref('stg_transactions') }}
),

small_amounts as (
    select
        {{ sentinel_flag_columns() }}
    from stg_transactions
    where amount <= {{ var('card_testing_max_amount') }}
),

counted as (
    select
        {{ sentinel_flag_columns() }},
        {{ sentinel_window_agg(
            'count', '*', 'small_amounts', 'card_id', 'event_time', var('card_testing_window_seconds')
        ) }} as window_small_txn_count
    from small_amounts
),

flagged as (
    select
        {{ sentinel_flag_columns("cast('card_testing' as text) as rule") }},
        cast('high' as text) as risk_level,
        cast(window_small_txn_count as text)
            || ' amounts of at most {{ sentinel_amount_label(var("card_testing_max_amount")) }}'
            || ' in {{ sentinel_seconds_label(var("card_testing_window_seconds")) }}' as reason,
        window_small_txn_count
    from counted
    where window_small_txn_count >= {{ var('card_testing_min_txns') }}
)

select * from flagged
