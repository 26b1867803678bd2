{#- No two rows share the same values of `columns` (nulls compare equal, as in group by).
    dbt_utils is not available offline, so the project carries its own. -#}
{% test unique_combination(model, columns) %}

select
    {{ columns | join(', ') }},
    count(*) as row_count
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1

{% endtest %}
