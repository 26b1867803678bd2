-- The first transaction of each (card, device) pair, ordered by (event_time, txn_id) with txn_id
-- bytewise: where a device was first used on a card. Feeds account_takeover; a late earlier use
-- of the same device replaces the row.
with

stg_transactions as (
    select * from {{ ref('stg_transactions') }}
),

with_device as (
    select
        {{ sentinel_flag_columns() }},
        device_id
    from stg_transactions
    where device_id is not null
),

numbered as (
    select
        {{ sentinel_flag_columns() }},
        device_id,
        row_number() over (
            partition by card_id, device_id order by event_time, {{ sentinel_bytewise('txn_id') }}
        ) as device_use_number
    from with_device
)

select
    {{ sentinel_flag_columns(indent=4) }},
    device_id
from numbered
where device_use_number = 1
