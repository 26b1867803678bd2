-- Country changes that go somewhere new: transactions whose country differs from the countries of
-- the card's previous two transactions with a country (ordered by (event_time, txn_id), txn_id
-- bytewise). Going back where the card just was (home -> foreign web shop -> home) is not one.
-- Feeds cross_border.
with

stg_transactions as (
    select * from {{ ref('stg_transactions') }}
),

with_country as (
    select
        {{ sentinel_flag_columns() }}
    from stg_transactions
    where country is not null
),

with_previous_country as (
    select
        {{ sentinel_flag_columns() }},
        lag(country) over (
            partition by card_id order by event_time, {{ sentinel_bytewise('txn_id') }}
        ) as previous_country,
        lag(country, 2) over (
            partition by card_id order by event_time, {{ sentinel_bytewise('txn_id') }}
        ) as country_before_previous
    from with_country
)

select
    {{ sentinel_flag_columns(indent=4) }},
    previous_country
from with_previous_country
where country <> previous_country
    and (country_before_previous is null or country <> country_before_previous)
