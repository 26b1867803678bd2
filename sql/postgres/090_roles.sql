-- Two roles for the people around the engine. Idempotent; passwords are set by `sentinel up`
-- (embedded engine) or by the operator (another server).
--   sentinel_loader   inserts into the source, nothing else
--   sentinel_analyst  reads the fraud schema's views and marts, nothing else

do $$
begin
    if not exists (select from pg_roles where rolname = 'sentinel_loader') then
        create role sentinel_loader login;
    end if;
    if not exists (select from pg_roles where rolname = 'sentinel_analyst') then
        create role sentinel_analyst login;
    end if;
end
$$;

alter role sentinel_loader nosuperuser nocreatedb nocreaterole noreplication nobypassrls;
alter role sentinel_analyst nosuperuser nocreatedb nocreaterole noreplication nobypassrls;

-- The analyst can never write, whatever a client asks for; runaway dashboard queries stop.
alter role sentinel_analyst set default_transaction_read_only = on;
alter role sentinel_analyst set statement_timeout = '60s';

revoke all on schema public from sentinel_loader, sentinel_analyst;
revoke create on schema public from public;

grant usage on schema fraud to sentinel_loader, sentinel_analyst;

-- Loader: insert into the source. The loader's COPY goes into a session temp table first.
grant insert on fraud.transactions to sentinel_loader;
do $$
begin
    execute format('grant temporary on database %I to sentinel_loader', current_database());
end
$$;

-- Analyst: select on everything in fraud (source, views, marts), now and in the future,
-- whichever role creates it (the owner running `dbt run` or `sentinel up`).
grant select on all tables in schema fraud to sentinel_analyst;
alter default privileges in schema fraud grant select on tables to sentinel_analyst;
