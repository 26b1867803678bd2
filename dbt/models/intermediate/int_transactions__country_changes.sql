-- Transactions whose country differs from the country of the card's previous transaction with a
-- country, ordered by (event_time, txn_id) with txn_id bytewise. Feeds cross_border.
with

stg_transactions as (
    select * from {{ ref('stg_transactions') }}
),

with_country as (
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
        event_time
    from stg_transactions
    where country is not null
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
    from with_country
)

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
