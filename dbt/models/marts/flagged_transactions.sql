-- One row per (txn_id, rule) currently flagged: every rule's flags, with a risk level and a
-- human reason. New rows reach the alert sinks through the post-hook's change log.
{#- Unique indexes exist on PostgreSQL only; RisingWave and Materialize take plain ones. -#}
{%- set key_index = {'columns': ['txn_id', 'rule']} -%}
{%- if target.type not in ('risingwave', 'materialize') -%}
    {%- do key_index.update({'unique': true}) -%}
{%- endif -%}
{{
    config(
        unique_key=['txn_id', 'rule'],
        post_hook="{{ sentinel_alert_changelog(this) }}",
        indexes=[
            key_index,
            {'columns': ['card_id']},
            {'columns': ['event_time']},
        ],
    )
}}

with

high_value as (
    select * from {{ ref('int_flags__high_value') }}
),

velocity as (
    select * from {{ ref('int_flags__velocity') }}
),

impossible_travel as (
    select * from {{ ref('int_flags__impossible_travel') }}
),

card_testing as (
    select * from {{ ref('int_flags__card_testing') }}
),

account_takeover as (
    select * from {{ ref('int_flags__account_takeover') }}
),

amount_spike as (
    select * from {{ ref('int_flags__amount_spike') }}
),

cross_border as (
    select * from {{ ref('int_flags__cross_border') }}
)

{%- for rule in ['high_value', 'velocity', 'impossible_travel', 'card_testing',
                 'account_takeover', 'amount_spike', 'cross_border'] %}
{%- if not loop.first %}

union all
{% endif %}
select
    {{ sentinel_flag_columns('rule', indent=4) }},
    risk_level,
    reason
from {{ rule }}
{%- endfor %}
