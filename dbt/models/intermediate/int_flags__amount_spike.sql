-- amount_spike: an amount far above the card's own recent average. The average is over the
-- card's previous amount_spike_history_txns transactions (a rows frame, so it stays bounded),
-- ordered by (event_time, txn_id) with txn_id bytewise. t is flagged when at least
-- amount_spike_min_history of them exist, amount >= amount_spike_min_amount, and
-- amount > amount_spike_factor x their average (compared as amount x n > factor x sum).
with

stg_transactions as (
    select * from {{ ref('stg_transactions') }}
),

with_history as (
    select
        {{ sentinel_flag_columns() }},
        count(*) over (
            partition by card_id
            order by event_time, {{ sentinel_bytewise('txn_id') }}
            rows between {{ var('amount_spike_history_txns') | int }} preceding and 1 preceding
        ) as history_txn_count,
        sum(amount) over (
            partition by card_id
            order by event_time, {{ sentinel_bytewise('txn_id') }}
            rows between {{ var('amount_spike_history_txns') | int }} preceding and 1 preceding
        ) as history_amount_total
    from stg_transactions
),

flagged as (
    select
        {{ sentinel_flag_columns("cast('amount_spike' as text) as rule") }},
        cast('medium' as text) as risk_level,
        {{ sentinel_format_amount('amount') }} || ' ' || currency || ' vs an average of '
            || {{ sentinel_format_amount('history_amount_total / history_txn_count') }}
            || ' over the previous ' || cast(history_txn_count as text) || ' transactions' as reason,
        history_txn_count,
        history_amount_total
    from with_history
    where history_txn_count >= {{ var('amount_spike_min_history') }}
        and amount >= {{ var('amount_spike_min_amount') }}
        and amount * history_txn_count > {{ var('amount_spike_factor') }} * history_amount_total
)

select * from flagged
