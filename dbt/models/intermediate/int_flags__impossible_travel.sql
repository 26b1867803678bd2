-- impossible_travel (DESIGN.md): p is the latest earlier transaction of t's card that has
-- coordinates, ordered by (event_time, txn_id) with txn_id compared bytewise; t has coordinates;
-- the haversine distance d (R = 6371.0 km) from p to t is >= impossible_travel_min_km; and
-- d / (t.event_time - p.event_time) > impossible_travel_max_kmh, a zero interval counting as
-- infinite speed.
with

stg_transactions as (
    select * from {{ ref('stg_transactions') }}
),

located as (
    select
        {{ sentinel_flag_columns() }},
        lat,
        lon
    from stg_transactions
    where lat is not null
        and lon is not null
),

paired as (
    select
        {{ sentinel_flag_columns() }},
        lat,
        lon,
        lag(txn_id) over (
            partition by card_id order by event_time, {{ sentinel_bytewise('txn_id') }}
        ) as previous_txn_id,
        lag(event_time) over (
            partition by card_id order by event_time, {{ sentinel_bytewise('txn_id') }}
        ) as previous_event_time,
        lag(lat) over (
            partition by card_id order by event_time, {{ sentinel_bytewise('txn_id') }}
        ) as previous_lat,
        lag(lon) over (
            partition by card_id order by event_time, {{ sentinel_bytewise('txn_id') }}
        ) as previous_lon
    from located
),

measured as (
    select
        {{ sentinel_flag_columns() }},
        previous_txn_id,
        previous_event_time,
        {{ sentinel_haversine_km('previous_lat', 'previous_lon', 'lat', 'lon') }} as distance_km,
        {{ sentinel_epoch_seconds('event_time - previous_event_time') }} as elapsed_seconds
    from paired
    where previous_txn_id is not null
),

flagged as (
    select
        {{ sentinel_flag_columns("cast('impossible_travel' as text) as rule") }},
        cast('critical' as text) as risk_level,
        {{ sentinel_format_int('distance_km') }} || ' km in '
            || {{ sentinel_format_duration('elapsed_seconds') }} || ' = '
            || case
                when elapsed_seconds = 0 then 'infinite speed'
                else {{ sentinel_format_int('distance_km * 3600 / elapsed_seconds') }} || ' km/h'
            end as reason,
        previous_txn_id,
        previous_event_time,
        distance_km,
        elapsed_seconds
    from measured
    where distance_km >= {{ var('impossible_travel_min_km') }}
        and (
            elapsed_seconds = 0
            or distance_km * 3600 > {{ var('impossible_travel_max_kmh') }} * elapsed_seconds
        )
)

select * from flagged
