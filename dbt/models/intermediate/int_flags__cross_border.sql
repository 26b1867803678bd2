-- cross_border: a card hopping between countries. A country change is a transaction whose
-- country differs from the card's previous transaction with a country (ordered by
-- (event_time, txn_id), txn_id bytewise). t is flagged when t is a country change and at least
-- cross_border_min_changes changes of t's card (t included) have event_time in
-- [t.event_time - window, t.event_time].
with

transactions as (
    select * from {{ ref('stg_transactions') }}
),

with_previous_country as (
    select
        txn_id,
        card_id,
        customer_id,
        merchant_id,
        merchant_category,
        country,
        channel,
        amount,
        currency,
        event_time,
        lag(country) over (
            partition by card_id order by event_time, {{ sentinel_bytewise('txn_id') }}
        ) as previous_country
    from transactions
    where country is not null
),

country_changes as (
    select
        txn_id,
        card_id,
        customer_id,
        merchant_id,
        merchant_category,
        country,
        channel,
        amount,
        currency,
        event_time,
        previous_country
    from with_previous_country
    where country <> previous_country
),

counted as (
    select
        txn_id,
        card_id,
        customer_id,
        merchant_id,
        merchant_category,
        country,
        channel,
        amount,
        currency,
        event_time,
        previous_country,
        {{ sentinel_window_agg(
            'count', '*', 'country_changes', 'card_id', 'event_time', var('cross_border_window_seconds')
        ) }} as window_change_count
    from country_changes
),

flagged as (
    select
        txn_id,
        cast('cross_border' as text) as rule,
        card_id,
        customer_id,
        merchant_id,
        merchant_category,
        country,
        channel,
        amount,
        currency,
        event_time,
        cast('high' as text) as risk_level,
        cast(window_change_count as text) || ' country changes in '
            || '{{ sentinel_seconds_label(var("cross_border_window_seconds")) }}'
            || ', ' || previous_country || ' to ' || country as reason,
        previous_country,
        window_change_count
    from counted
    where window_change_count >= {{ var('cross_border_min_changes') }}
)

select * from flagged
