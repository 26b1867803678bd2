#!/bin/sh
# One-shot deployment of Sentinel onto the server SENTINEL_DSN points at, run by the compose
# stack's *-init services (and usable by hand against any such server). Idempotent.
#   1. risingwave|materialize: create the users sentinel_loader and sentinel_analyst if missing
#      (their CREATE USER/ROLE has no IF NOT EXISTS, hence psql's \if) and set their passwords.
#   2. `sentinel up --engine <engine>`: apply sql/<engine>/*.sql and `dbt run --target <engine>`.
#   3. postgres: set the two roles' passwords (sql/postgres/090_roles.sql created the roles).
# Environment: SENTINEL_ENGINE, SENTINEL_DSN (owner), SENTINEL_LOADER_PASSWORD,
# SENTINEL_ANALYST_PASSWORD, and the dbt target's variables (dbt/profiles.yml).
set -eu

engine="${SENTINEL_ENGINE:?set SENTINEL_ENGINE to postgres, risingwave or materialize}"
dsn="${SENTINEL_DSN:?set SENTINEL_DSN to the owner DSN of the engine}"
: "${SENTINEL_LOADER_PASSWORD:?set SENTINEL_LOADER_PASSWORD}"
: "${SENTINEL_ANALYST_PASSWORD:?set SENTINEL_ANALYST_PASSWORD}"

case "$engine" in
    postgres) catalog="" ;;
    risingwave) catalog="select rolname as name from pg_catalog.pg_roles" ;;
    materialize) catalog="select name from mz_catalog.mz_roles" ;;
    *)
        echo "sentinel-init: unknown SENTINEL_ENGINE '$engine' (postgres, risingwave, materialize)" >&2
        exit 2
        ;;
esac

users_sql() {
    # RisingWave: CREATE/ALTER USER ... WITH PASSWORD; Materialize: CREATE/ALTER ROLE ... WITH PASSWORD
    # (the emulator runs without authentication; the password matters where auth is enabled).
    kind=user; [ "$engine" = materialize ] && kind=role
    cat <<SQL
select not exists (select 1 from ($catalog) as r where r.name = 'sentinel_loader') as missing_loader,
       not exists (select 1 from ($catalog) as r where r.name = 'sentinel_analyst') as missing_analyst
\gset
\if :missing_loader
create $kind sentinel_loader with login;
\endif
\if :missing_analyst
create $kind sentinel_analyst with login;
\endif
alter $kind sentinel_loader with password :'loader_password';
alter $kind sentinel_analyst with password :'analyst_password';
SQL
}

psql_vars() {
    psql "$dsn" --no-psqlrc --quiet -v ON_ERROR_STOP=1 \
        -v loader_password="$SENTINEL_LOADER_PASSWORD" \
        -v analyst_password="$SENTINEL_ANALYST_PASSWORD" "$@"
}

if [ -n "$catalog" ]; then
    echo "sentinel-init: users on $engine" >&2
    users_sql | psql_vars
fi

sentinel up --engine "$engine"

if [ "$engine" = postgres ]; then
    psql_vars <<'SQL'
alter role sentinel_loader password :'loader_password';
alter role sentinel_analyst password :'analyst_password';
SQL
fi
echo "sentinel-init: $engine is ready" >&2
