{#-
    sentinel_alert_changelog(relation): the post-hook of `flagged_transactions` that lets alerts
    leave the engine. Engine differences live here only:
      postgres (and Sentinel's adapter) — (re)install the change-log triggers defined in
          sql/postgres/040_alerts.sql; they append '+'/'-' rows to sentinel_alerts.change_log
          and pg_notify('sentinel_alerts', seq)
      risingwave — a subscription on the materialized view, read with a subscription cursor
      materialize — retained history on the materialized view, so SUBSCRIBE ... AS OF can resume
    Usage: {{ config(post_hook="{{ sentinel_alert_changelog(this) }}") }}
-#}

{% macro sentinel_alert_changelog(relation) -%}
    {{ return(adapter.dispatch('sentinel_alert_changelog')(relation)) }}
{%- endmacro %}

{% macro postgres__sentinel_alert_changelog(relation) -%}
    select sentinel_alerts.install_changelog('{{ relation.include(database=false) }}'::regclass)
{%- endmacro %}

{#- The subscription keeps `alert_retention` of changes (RisingWave's documented form, e.g. '1D'):
    a listener down longer than that cannot resume its sinks' positions. -#}
{% macro risingwave__sentinel_alert_changelog(relation) -%}
    create subscription if not exists {{ sentinel_alert_subscription_name(relation) }}
        from {{ relation }}
        with (retention = '{{ var("alert_retention", "7D") }}')
{%- endmacro %}

{#- SUBSCRIBE ... AS OF t needs history back to t; without it a restarted listener could only
    start from a fresh snapshot. RETAIN HISTORY is a private-preview feature of Materialize. -#}
{% macro materialize__sentinel_alert_changelog(relation) -%}
    alter materialized view {{ relation }}
        set (retain history = for '{{ var("alert_retention", "7d") }}')
{%- endmacro %}

{#- `fraud.flagged_transactions` → `fraud.flagged_transactions_alerts`; the listener uses the same name. -#}
{% macro sentinel_alert_subscription_name(relation) -%}
    {{ relation.schema }}.{{ relation.identifier }}_alerts
{%- endmacro %}
