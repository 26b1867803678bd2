-- What the alert listener needs on RisingWave, besides the subscription
-- fraud.flagged_transactions_alerts on fraud.flagged_transactions (created by the dbt post-hook
-- `sentinel_alert_changelog`, because it depends on the model; retention = var alert_retention):
-- where each sink's delivered position is kept, with the columns of the PostgreSQL table.
--
-- The listener reads the subscription through a subscription cursor and, per sink, stores the
-- rw_timestamp of the last change it delivered; after a restart it declares the cursor
-- `since <that rw_timestamp>` (within the retention) and re-delivers at least once from there.
-- A keyed RisingWave table with `on conflict do update full` overwrites the row of a repeated
-- key, so an INSERT of the whole row is an upsert of the position.

create schema if not exists sentinel_alerts;

create table if not exists sentinel_alerts.sink_positions (
    sink        varchar primary key,
    kind        varchar not null,
    position    bigint not null default 0,
    delivered   bigint not null default 0,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
) on conflict do update full;
