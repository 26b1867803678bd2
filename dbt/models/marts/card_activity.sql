-- One row per card: how much it has been used, and when first and last.
{#- Unique indexes exist on PostgreSQL only; RisingWave and Materialize take plain ones. -#}
{%- set key_index = {'columns': ['card_id']} -%}
{%- if target.type not in ('risingwave', 'materialize') -%}
    {%- do key_index.update({'unique': true}) -%}
{%- endif -%}
{{
    config(
        indexes=[
            key_index,
        ],
    )
}}

with

stg_transactions as (
    select * from {{ ref('stg_transactions') }}
)

select
    card_id,
    count(*) as txn_count,
    sum(amount) as amount_total,
    max(amount) as amount_max,
    min(event_time) as first_seen_at,
    max(event_time) as last_seen_at
from stg_transactions
group by card_id
