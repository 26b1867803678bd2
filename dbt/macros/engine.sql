{#- Engine differences, one dispatched macro each (DESIGN.md: dialect differences live only here).
    `postgres__` serves the embedded engine and Sentinel's adapter; RisingWave and Materialize
    declare postgres as their parent, so each override below is a real difference. -#}

{#- An interval of `seconds` seconds, as a literal. -#}
{% macro sentinel_interval_seconds(seconds) -%}
    {{ return(adapter.dispatch('sentinel_interval_seconds', 'sentinel')(seconds)) }}
{%- endmacro %}

{% macro default__sentinel_interval_seconds(seconds) -%}
    interval '{{ seconds | int }} seconds'
{%- endmacro %}


{#- Seconds in an interval, as double precision. -#}
{% macro sentinel_epoch_seconds(interval_expr) -%}
    {{ return(adapter.dispatch('sentinel_epoch_seconds', 'sentinel')(interval_expr)) }}
{%- endmacro %}

{% macro default__sentinel_epoch_seconds(interval_expr) -%}
    cast(extract(epoch from ({{ interval_expr }})) as double precision)
{%- endmacro %}


{#- A text expression that orders bytewise (DESIGN.md: txn_id ties break bytewise). PostgreSQL
    orders text by the database collation unless told; RisingWave and Materialize always compare
    strings bytewise and have no COLLATE. -#}
{% macro sentinel_bytewise(expr) -%}
    {{ return(adapter.dispatch('sentinel_bytewise', 'sentinel')(expr)) }}
{%- endmacro %}

{% macro default__sentinel_bytewise(expr) -%}
    {{ expr }}
{%- endmacro %}

{% macro postgres__sentinel_bytewise(expr) -%}
    {{ expr }} collate "C"
{%- endmacro %}


{#- Great-circle distance in km between two points in degrees (haversine, R = 6371.0 km).
    least() guards asin against rounding just above 1 for antipodal points. -#}
{% macro sentinel_haversine_km(lat1, lon1, lat2, lon2) -%}
    {{ return(adapter.dispatch('sentinel_haversine_km', 'sentinel')(lat1, lon1, lat2, lon2)) }}
{%- endmacro %}

{% macro default__sentinel_haversine_km(lat1, lon1, lat2, lon2) -%}
    {%- set rad = '0.017453292519943295' -%}
    (2 * 6371.0 * asin(sqrt(least(1.0,
        sin(({{ lat2 }} - {{ lat1 }}) * {{ rad }} / 2) * sin(({{ lat2 }} - {{ lat1 }}) * {{ rad }} / 2)
        + cos({{ lat1 }} * {{ rad }}) * cos({{ lat2 }} * {{ rad }})
        * sin(({{ lon2 }} - {{ lon1 }}) * {{ rad }} / 2) * sin(({{ lon2 }} - {{ lon1 }}) * {{ rad }} / 2)
    ))))
{%- endmacro %}

{% macro postgres__sentinel_haversine_km(lat1, lon1, lat2, lon2) -%}
    (2 * 6371.0 * asin(sqrt(least(1.0,
        power(sin(radians({{ lat2 }} - {{ lat1 }}) / 2), 2)
        + cos(radians({{ lat1 }})) * cos(radians({{ lat2 }}))
        * power(sin(radians({{ lon2 }} - {{ lon1 }}) / 2), 2)
    ))))
{%- endmacro %}


{#- agg(expr) over the rows of `relation` with the same `partition_by` whose `order_by` lies in
    [current - seconds, current], peers included: the SQL frame
    `range between interval 'N seconds' preceding and current row`. Use it in a select over
    `relation` (a CTE). Materialize supports RANGE frames only as the default frame, so there it
    is the equivalent correlated subquery, which Materialize maintains as a join. -#}
{% macro sentinel_window_agg(agg, expr, relation, partition_by, order_by, seconds) -%}
    {{ return(adapter.dispatch('sentinel_window_agg', 'sentinel')(agg, expr, relation, partition_by, order_by, seconds)) }}
{%- endmacro %}

{% macro default__sentinel_window_agg(agg, expr, relation, partition_by, order_by, seconds) -%}
    {{ agg }}({{ expr }}) over (
            partition by {{ partition_by }}
            order by {{ order_by }}
            range between {{ sentinel_interval_seconds(seconds) }} preceding and current row
        )
{%- endmacro %}

{% macro materialize__sentinel_window_agg(agg, expr, relation, partition_by, order_by, seconds) -%}
    (
            select {{ agg }}({{ 'framed.' ~ expr if expr != '*' else '*' }})
            from {{ relation }} as framed
            where framed.{{ partition_by }} = {{ relation }}.{{ partition_by }}
                and framed.{{ order_by }} >= {{ relation }}.{{ order_by }} - {{ sentinel_interval_seconds(seconds) }}
                and framed.{{ order_by }} <= {{ relation }}.{{ order_by }}
        )
{%- endmacro %}


{#- A number rounded to an integer with thousands separators: 42060.4 -> '42,060'. -#}
{% macro sentinel_format_int(expr) -%}
    {{ return(adapter.dispatch('sentinel_format_int', 'sentinel')(expr)) }}
{%- endmacro %}

{% macro postgres__sentinel_format_int(expr) -%}
    to_char(round({{ expr }}), 'FM999,999,999,999,990')
{%- endmacro %}

{#- RisingWave and Materialize format only timestamps with to_char: build the groups. -#}
{% macro default__sentinel_format_int(expr) -%}
    {%- set n = 'cast(round(' ~ expr ~ ') as bigint)' -%}
    (case
        when {{ n }} < 1000 then cast({{ n }} as text)
        {%- for groups in range(2, 6) %}
        {%- set scale = 1000 ** (groups - 1) %}
        when {{ n }} < {{ scale * 1000 }} then cast({{ n }} / {{ scale }} as text)
            {%- for g in range(groups - 2, -1, -1) %}
            || ',' || lpad(cast({{ n }} / {{ 1000 ** g }} % 1000 as text), 3, '0')
            {%- endfor %}
        {%- endfor %}
        else cast({{ n }} as text)
    end)
{%- endmacro %}


{#- An amount with thousands separators and two decimals: 2500 -> '2,500.00'. -#}
{% macro sentinel_format_amount(expr) -%}
    {{ return(adapter.dispatch('sentinel_format_amount', 'sentinel')(expr)) }}
{%- endmacro %}

{% macro postgres__sentinel_format_amount(expr) -%}
    to_char(round({{ expr }}, 2), 'FM999,999,999,999,990.00')
{%- endmacro %}

{% macro default__sentinel_format_amount(expr) -%}
    {%- set cents = 'cast(round((' ~ expr ~ ') * 100) as bigint)' -%}
    ({{ sentinel_format_int(cents ~ ' / 100') }} || '.' || lpad(cast({{ cents }} % 100 as text), 2, '0'))
{%- endmacro %}


{#- Keeping the rules to the source rows the contract allows (DESIGN.md: fraud.transactions).
    PostgreSQL enforces it with a primary key and CHECK constraints (sql/postgres/010_source.sql):
    both macros render nothing. RisingWave has no CHECK constraints: rows a raw INSERT let in that
    break the contract are left out. Materialize has neither primary key nor CHECK: the same
    filter, and only the first arrival of each txn_id, so a re-sent id never counts twice.
    `select {{ sentinel_source_first_arrival() }} <columns> from <source> {{ sentinel_source_contract() }}` -#}
{% macro sentinel_source_first_arrival() -%}
    {{ return(adapter.dispatch('sentinel_source_first_arrival', 'sentinel')()) }}
{%- endmacro %}

{% macro default__sentinel_source_first_arrival() -%}
{%- endmacro %}

{% macro materialize__sentinel_source_first_arrival() -%}
    distinct on (txn_id)
{%- endmacro %}

{% macro sentinel_source_contract() -%}
    {{ return(adapter.dispatch('sentinel_source_contract', 'sentinel')()) }}
{%- endmacro %}

{% macro default__sentinel_source_contract() -%}
{%- endmacro %}

{% macro risingwave__sentinel_source_contract() -%}
where {{ sentinel_source_row_is_valid() }}
{%- endmacro %}

{% macro materialize__sentinel_source_contract() -%}
where {{ sentinel_source_row_is_valid() }}
order by txn_id, ingested_at
{%- endmacro %}

{#- The source contract's CHECK constraints as one boolean expression. -#}
{% macro sentinel_source_row_is_valid() -%}
    length(trim(txn_id)) > 0
        and length(trim(card_id)) > 0
        and length(trim(merchant_id)) > 0
        and amount > 0
        and length(currency) = 3
        and currency = upper(currency)
        and (country is null or (length(country) = 2 and country = upper(country)))
        and (lat is null) = (lon is null)
        and (lat is null or lat between -90 and 90)
        and (lon is null or lon between -180 and 180)
{%- endmacro %}


{#- RisingWave and Materialize declare postgres as their parent adapter, so they would inherit the
    postgres__ versions above; these send them to the portable default__ instead. -#}
{% macro risingwave__sentinel_bytewise(expr) %}{{ return(default__sentinel_bytewise(expr)) }}{% endmacro %}
{% macro materialize__sentinel_bytewise(expr) %}{{ return(default__sentinel_bytewise(expr)) }}{% endmacro %}

{% macro risingwave__sentinel_haversine_km(lat1, lon1, lat2, lon2) %}{{ return(default__sentinel_haversine_km(lat1, lon1, lat2, lon2)) }}{% endmacro %}
{% macro materialize__sentinel_haversine_km(lat1, lon1, lat2, lon2) %}{{ return(default__sentinel_haversine_km(lat1, lon1, lat2, lon2)) }}{% endmacro %}

{% macro risingwave__sentinel_format_int(expr) %}{{ return(default__sentinel_format_int(expr)) }}{% endmacro %}
{% macro materialize__sentinel_format_int(expr) %}{{ return(default__sentinel_format_int(expr)) }}{% endmacro %}

{% macro risingwave__sentinel_format_amount(expr) %}{{ return(default__sentinel_format_amount(expr)) }}{% endmacro %}
{% macro materialize__sentinel_format_amount(expr) %}{{ return(default__sentinel_format_amount(expr)) }}{% endmacro %}
