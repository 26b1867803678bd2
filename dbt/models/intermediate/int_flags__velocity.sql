-- velocity: at least velocity_min_txns transactions of t's card (t included) have event_time in
-- [t.event_time - window, t.event_time]: the frame `range between interval '60 seconds'
-- preceding and current row`, peers (equal event_time) included (DESIGN.md).
with

stg_transactions as (
    select * from {{ ref('stg_transactions') }}
),

counted as (
    select
        {{ sentinel_flag_columns() }},
        {{ sentinel_window_agg(
            'count', '*', 'stg_transactions', 'card_id', 'event_time', var('velocity_window_seconds')
        ) }} as window_txn_count
    from stg_transactions
),

flagged as (
    select
        {{ sentinel_flag_columns("cast('velocity' as text) as rule") }},
        cast(
            case
                when window_txn_count >= 2 * {{ var('velocity_min_txns') }} then 'high'
                else 'medium'
            end as text
        ) as risk_level,
        cast(window_txn_count as text)
            || ' transactions in {{ sentinel_seconds_label(var("velocity_window_seconds")) }}' as reason,
        window_txn_count
    from counted
    where window_txn_count >= {{ var('velocity_min_txns') }}
)

select * from flagged
