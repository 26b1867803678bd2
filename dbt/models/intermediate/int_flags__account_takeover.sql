-- account_takeover: a new device on a card that other devices used before, for a large amount.
-- t is the first use of its device on t's card (int_card_devices__first_use), at least
-- account_takeover_min_devices other devices were first used on the card earlier (ordered by
-- (event_time, txn_id), txn_id bytewise), and amount >= account_takeover_min_amount.
with

first_uses as (
    select * from {{ ref('int_card_devices__first_use') }}
),

counted as (
    select
        {{ sentinel_flag_columns() }},
        device_id,
        row_number() over (
            partition by card_id order by event_time, {{ sentinel_bytewise('txn_id') }}
        ) - 1 as earlier_device_count
    from first_uses
)

select
    {{ sentinel_flag_columns("cast('account_takeover' as text) as rule", indent=4) }},
    cast('critical' as text) as risk_level,
    'new device ' || device_id || ' after ' || cast(earlier_device_count as text)
        || case when earlier_device_count = 1 then ' other device: ' else ' other devices: ' end
        || {{ sentinel_format_amount('amount') }} || ' ' || currency as reason,
    device_id,
    earlier_device_count
from counted
where earlier_device_count >= {{ var('account_takeover_min_devices') }}
    and amount >= {{ var('account_takeover_min_amount') }}
