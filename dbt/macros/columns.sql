{#- The columns every rule carries from a transaction to its flag, in the order of
    fraud.flagged_transactions. `rule_expr`, when given, goes right after txn_id. -#}
{% macro sentinel_flag_columns(rule_expr=none, indent=8) -%}
{%- set columns = ['txn_id'] + ([rule_expr] if rule_expr else []) + [
    'card_id', 'customer_id', 'merchant_id', 'merchant_category', 'country', 'channel',
    'amount', 'currency', 'event_time',
] -%}
{{ columns | join(',\n' ~ ' ' * indent) }}
{%- endmacro %}
