-- The source on RisingWave: the columns of sql/postgres/010_source.sql, in RisingWave's types.
-- Applied by `sentinel up --engine risingwave` (statement by statement); idempotent; never drops or rewrites data.
--
-- Differences from PostgreSQL, each checked in RisingWave's documentation (v2.7):
--   * A re-sent txn_id is ignored: primary key + `on conflict do nothing`. RisingWave's default
--     for a keyed table is to OVERWRITE the earlier row (`do update full`), which would let a
--     re-sent id change a transaction that detection has already seen.
--   * numeric takes no (precision, scale) and char(n) does not exist: amount is numeric, currency
--     and country are varchar. Amounts keep the two decimals the loader sends.
--   * CHECK constraints do not exist; NOT NULL does. The loader validates every row (the same
--     rules as the PostgreSQL constraints) and the staging model filters what a raw INSERT lets in.
--   * COPY ... FROM STDIN is not supported (only COPY (query) TO STDOUT): writers use multi-row
--     INSERT, batched by size and time.
--   * timestamptz is stored in UTC like PostgreSQL; `default now()` is evaluated per insert.

create schema if not exists fraud;

create table if not exists fraud.transactions (
    txn_id            varchar primary key,
    card_id           varchar not null,
    customer_id       varchar,
    merchant_id       varchar not null,
    merchant_category varchar,
    amount            numeric not null,
    currency          varchar not null default 'USD',
    channel           varchar,
    country           varchar,
    lat               double precision,
    lon               double precision,
    device_id         varchar,
    event_time        timestamptz not null,
    ingested_at       timestamptz not null default now(),
    is_fraud          boolean,
    fraud_pattern     varchar
) on conflict do nothing;

comment on table fraud.transactions is
    'Card transactions, append-only. A re-sent txn_id is ignored (on conflict do nothing).';
