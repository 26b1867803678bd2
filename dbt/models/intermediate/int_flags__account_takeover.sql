-- account_takeover: the first use of a device on a card that already has history, for a large
-- amount. t has a device_id that no earlier transaction of t's card used (ordered by
-- (event_time, txn_id), txn_id bytewise), at least account_takeover_min_history earlier
-- transactions of the card, and amount >= account_takeover_min_amount.
with

transactions as (
    select * from {{ ref('stg_transactions') }}
),

card_sequenced as (
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
        device_id,
        row_number() over (
            partition by card_id order by event_time, {{ sentinel_bytewise('txn_id') }}
        ) - 1 as earlier_txn_count
    from transactions
),

device_sequenced as (
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
        device_id,
        earlier_txn_count,
        row_number() over (
            partition by card_id, device_id order by event_time, {{ sentinel_bytewise('txn_id') }}
        ) as device_use_number
    from card_sequenced
    where device_id is not null
),

flagged as (
    select
        txn_id,
        cast('account_takeover' as text) as rule,
        card_id,
        customer_id,
        merchant_id,
        merchant_category,
        country,
        channel,
        amount,
        currency,
        event_time,
        cast('critical' as text) as risk_level,
        'new device ' || device_id || ' after '
            || cast(earlier_txn_count as text) || ' transactions: '
            || {{ sentinel_format_amount('amount') }} || ' ' || currency as reason,
        device_id,
        earlier_txn_count
    from device_sequenced
    where device_use_number = 1
        and earlier_txn_count >= {{ var('account_takeover_min_history') }}
        and amount >= {{ var('account_takeover_min_amount') }}
)

select * from flagged
