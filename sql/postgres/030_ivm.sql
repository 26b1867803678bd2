-- Incremental maintenance of dbt models (materialized='materialized_view'): the registry of
-- maintained models and the helpers their trigger functions call. Idempotent.
-- The trigger functions themselves are generated per model by `dbt run` (sentinel.ivm).

create schema if not exists sentinel_ivm;

comment on schema sentinel_ivm is
    'Incremental maintenance of dbt models: registry and generated trigger functions.';

create table if not exists sentinel_ivm.models (
    relation      text primary key,        -- schema-qualified model table, e.g. fraud.flagged_transactions
    model         text not null,           -- dbt model name
    shape         text not null,           -- linear | window | aggregate
    inputs        text[] not null,         -- schema-qualified relations the model reads
    roots         text[] not null,         -- source tables upstream of the model (locked on redeploy)
    columns       text[] not null,         -- output columns, in order
    locator       text[] not null,         -- columns that find a model row (unique key, partition key)
    sql           text not null,           -- the model's compiled SQL, as dbt compiled it
    fingerprint   text not null,           -- hash of sql + plan version; same fingerprint = no-op redeploy
    installed_at  timestamptz not null default now(),
    refreshed_at  timestamptz not null default now()
);

comment on table sentinel_ivm.models is
    'One row per model kept current by statement-level triggers on its inputs.';

-- Locks. Every maintenance trigger calls sentinel_ivm.lock() first: one global,
-- transaction-scoped advisory lock, taken shared, so that writers maintain models side by side,
-- while `dbt run` (and models whose maintenance joins inputs) take it exclusively with
-- sentinel_ivm.lock_all(). Per-key window models then lock the buckets of the keys they
-- maintain (pg_advisory_xact_lock(ivm_bucket_class, bucket), in bucket order): two transactions
-- touching a key are serialised in commit order, and after taking the bucket a READ COMMITTED
-- statement sees every earlier commit of its keys. Aggregates merge through row locks.
create or replace function sentinel_ivm.lock_check() returns void
language plpgsql as $$
begin
    if current_setting('transaction_isolation') <> 'read committed' then
        raise exception 'sentinel: maintained models need READ COMMITTED, not %',
            current_setting('transaction_isolation')
            using errcode = 'feature_not_supported',
                  hint = 'insert into fraud.transactions under the default isolation level';
    end if;
end
$$;

create or replace function sentinel_ivm.lock() returns void
language plpgsql as $$
begin
    perform sentinel_ivm.lock_check();
    perform pg_advisory_xact_lock_shared(7245812390466019);
end
$$;

comment on function sentinel_ivm.lock() is
    'Taken first by all incremental maintenance: the global advisory lock, shared.';

create or replace function sentinel_ivm.lock_all() returns void
language plpgsql as $$
begin
    perform sentinel_ivm.lock_check();
    perform pg_advisory_xact_lock(7245812390466019);
end
$$;

comment on function sentinel_ivm.lock_all() is
    'The global maintenance lock, exclusive: deploys, and maintenance that joins inputs.';

grant usage on schema sentinel_ivm to public;
grant execute on function sentinel_ivm.lock() to public;
grant execute on function sentinel_ivm.lock_all() to public;
grant execute on function sentinel_ivm.lock_check() to public;
