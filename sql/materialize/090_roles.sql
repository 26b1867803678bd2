-- Grants on Materialize (the roles sentinel_loader and sentinel_analyst are created by
-- deploy/init-engine.sh before `sentinel up` applies this: CREATE ROLE has no IF NOT EXISTS).
-- Idempotent.
--   sentinel_loader   inserts into the source, nothing else
--   sentinel_analyst  reads the fraud schema (source, views, materialized views), nothing else

-- Both work through the default cluster; neither may create anything.
grant usage on database materialize to sentinel_loader, sentinel_analyst;
grant usage on schema fraud to sentinel_loader, sentinel_analyst;
grant usage on cluster quickstart to sentinel_loader, sentinel_analyst;

grant insert on table fraud.transactions to sentinel_loader;

-- In Materialize's GRANT, "tables" covers tables, views and materialized views.
grant select on all tables in schema fraud to sentinel_analyst;
alter default privileges for all roles in schema fraud grant select on tables to sentinel_analyst;
