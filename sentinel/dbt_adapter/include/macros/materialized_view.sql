{#- Sentinel's materialization on PostgreSQL: the model becomes a table that statement-level
    triggers on its inputs keep equal to its SQL (sentinel.ivm plans and installs them). A model
    whose shape cannot be maintained fails here, naming the model and the construct. -#}
{% materialization materialized_view, adapter='sentinel' %}
    {%- set target_relation = this.incorporate(type='table') -%}

    {{ run_hooks(pre_hooks, inside_transaction=False) }}
    {{ run_hooks(pre_hooks, inside_transaction=True) }}

    {%- set message = adapter.sentinel_ivm_deploy(model['name'], target_relation, sql, config.get('unique_key'),
                                                  config.get('indexes', default=[])) -%}
    {% call statement('main') -%}
        select {{ dbt.string_literal('sentinel ivm: ' ~ message) }} as status
    {%- endcall %}
    {%- if message.startswith('created') or message.startswith('recreated') -%}
        {#- dbt's create_indexes, skipping those the materialization's own indexes already serve -#}
        {%- for index in config.get('indexes', default=[]) -%}
            {%- if not adapter.sentinel_index_covered(target_relation, index) -%}
                {% do run_query(get_create_index_sql(target_relation, index)) %}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {% do apply_grants(target_relation, config.get('grants'), should_revoke=True) %}
    {% do persist_docs(target_relation, model) %}

    {{ run_hooks(post_hooks, inside_transaction=True) }}
    {{ adapter.commit() }}
    {#- an online deploy's capture and staging tables go once the switch is committed -#}
    {% do adapter.sentinel_ivm_finish(target_relation) %}
    {{ run_hooks(post_hooks, inside_transaction=False) }}

    {{ return({'relations': [target_relation]}) }}
{% endmaterialization %}
