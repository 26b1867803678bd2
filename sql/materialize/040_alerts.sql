-- What the alert listener needs on Materialize, besides retained history on
-- fraud.flagged_transactions (set by the dbt post-hook `sentinel_alert_changelog`:
-- `alter materialized view ... set (retain history = for <var alert_retention>)`, because it
-- depends on the model): where each sink's delivered position is kept, with the columns of the
-- PostgreSQL table.
--
-- The listener runs `subscribe to fraud.flagged_transactions with (progress) as of <position>`
-- and, per sink, stores the mz_timestamp of the last change it delivered; after a restart it
-- resumes `as of` that timestamp (within the retained history) and re-delivers at least once from
-- there. Materialize tables have no keys: the listener updates the sink's row (insert when absent).

create schema if not exists sentinel_alerts;

create table if not exists sentinel_alerts.sink_positions (
    sink        text not null,
    kind        text not null,
    position    numeric(20, 0) not null default 0,
    delivered   bigint not null default 0,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
