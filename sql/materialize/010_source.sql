-- The source on Materialize: the columns of sql/postgres/010_source.sql, in Materialize's types.
-- Applied by `sentinel up --engine materialize` (statement by statement); idempotent; never drops or rewrites data.
--
-- Differences from PostgreSQL, each checked in Materialize's documentation (self-managed v26):
--   * A table takes only NOT NULL and DEFAULT: no PRIMARY KEY, no CHECK. A re-sent txn_id is
--     therefore stored twice, and the staging model keeps the first arrival of each txn_id
--     (`materialize__` dispatch of the dedup step) so that nothing downstream counts it twice.
--     The loader validates every row with the same rules as the PostgreSQL constraints.
--   * numeric(12, 2), char(3), char(2), double precision and timestamptz are as in PostgreSQL.
--   * COPY fraud.transactions FROM STDIN is supported (text and csv formats), so the loader's
--     COPY path works unchanged (without the temp table: Materialize has no ON CONFLICT).
--   * History: the source keeps 1 hour of history so a SUBSCRIBE ... AS OF can resume after a
--     short outage; the alert view keeps var alert_retention (dbt post-hook sentinel_alert_changelog).

create schema if not exists fraud;

create table if not exists fraud.transactions (
    txn_id            text not null,
    card_id           text not null,
    customer_id       text,
    merchant_id       text not null,
    merchant_category text,
    amount            numeric(12, 2) not null,
    currency          char(3) not null default 'USD',
    channel           text,
    country           char(2),
    lat               double precision,
    lon               double precision,
    device_id         text,
    event_time        timestamptz not null,
    ingested_at       timestamptz not null default now(),
    is_fraud          boolean,
    fraud_pattern     text
) with (retain history = for '1h');

comment on table fraud.transactions is
    'Card transactions, append-only. Re-sent txn_ids are stored; the staging model keeps the first.';
