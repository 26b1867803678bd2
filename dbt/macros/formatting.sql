{#- Human reasons (DESIGN.md): "5 transactions in 60 s", "8,412 km in 12 min = 42,060 km/h". -#}

{#- A duration known at compile time, e.g. a window var: 60 -> '60 s', 600 -> '10 min', 3600 -> '1 h'. -#}
{% macro sentinel_seconds_label(seconds) -%}
    {%- set s = seconds | int -%}
    {%- if s >= 3600 and s % 3600 == 0 -%}
        {{ s // 3600 }} h
    {%- elif s >= 120 and s % 60 == 0 -%}
        {{ s // 60 }} min
    {%- else -%}
        {{ s }} s
    {%- endif -%}
{%- endmacro %}


{#- An amount known at compile time, e.g. a threshold var: 2000 -> '2,000.00'. -#}
{% macro sentinel_amount_label(amount) -%}
    {{ '{:,.2f}'.format(amount | float) }}
{%- endmacro %}


{#- A duration in seconds (double precision) as text: under a minute '45 s', under an hour
    '12 min' (rounded), else '2 h 5 min' (whole minutes). -#}
{% macro sentinel_format_duration(seconds_expr) -%}
    (case
        when {{ seconds_expr }} < 60 then {{ sentinel_format_int(seconds_expr) }} || ' s'
        when {{ seconds_expr }} < 3600 then {{ sentinel_format_int(seconds_expr ~ ' / 60') }} || ' min'
        else {{ sentinel_format_int('floor((' ~ seconds_expr ~ ') / 3600)') }} || ' h '
            || {{ sentinel_format_int('floor(((' ~ seconds_expr ~ ') - 3600 * floor((' ~ seconds_expr ~ ') / 3600)) / 60)') }} || ' min'
    end)
{%- endmacro %}
