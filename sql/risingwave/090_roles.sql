-- Grants on RisingWave (it has users, not roles; the users sentinel_loader and sentinel_analyst
-- are created, with their passwords, by deploy/init-engine.sh before `sentinel up` applies this:
-- CREATE USER has no IF NOT EXISTS and takes no parameters). Idempotent.
--   sentinel_loader   inserts into the source, nothing else
--   sentinel_analyst  reads the fraud schema (source and materialized views), nothing else
-- RisingWave has no per-user settings, so `default_transaction_read_only` cannot be pinned as on
-- PostgreSQL: the analyst is read-only because SELECT is all it holds.

grant usage on schema fraud to sentinel_loader;
grant usage on schema fraud to sentinel_analyst;

grant insert on table fraud.transactions to sentinel_loader;

-- Analyst: select on what exists now, and (RisingWave v2.5+) on every table and materialized
-- view the owner's `dbt run` creates later in fraud.
grant select on all tables in schema fraud to sentinel_analyst;
grant select on all materialized views in schema fraud to sentinel_analyst;
alter default privileges in schema fraud grant select on tables to sentinel_analyst;
alter default privileges in schema fraud grant select on materialized views to sentinel_analyst;
