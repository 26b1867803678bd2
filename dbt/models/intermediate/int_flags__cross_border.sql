-- cross_border: a card hopping between countries. t is a change to a new country
-- (int_transactions__country_changes) and at least cross_border_min_changes changes of t's card,
-- t included, have event_time in [t.event_time - window, t.event_time].
with

country_changes as (
    select * from {{ ref('int_transactions__country_changes') }}
),

counted as (
    select
        {{ sentinel_flag_columns() }},
        previous_country,
        {{ sentinel_window_agg(
            'count', '*', 'country_changes', 'card_id', 'event_time', var('cross_border_window_seconds')
        ) }} as window_change_count
    from country_changes
)

select
    {{ sentinel_flag_columns("cast('cross_border' as text) as rule", indent=4) }},
    cast('high' as text) as risk_level,
    cast(window_change_count as text) || ' country changes in '
        || '{{ sentinel_seconds_label(var("cross_border_window_seconds")) }}'
        || ', ' || previous_country || ' to ' || country as reason,
    previous_country,
    window_change_count
from counted
where window_change_count >= {{ var('cross_border_min_changes') }}
