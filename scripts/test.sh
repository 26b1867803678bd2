#!/usr/bin/env bash
# The test suite, against real PostgreSQL servers that the tests start and stop themselves.
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
# JDBC client test: Debian's PostgreSQL JDBC driver, installed when we can (root + apt).
if [ ! -e /usr/share/java/postgresql.jar ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpostgresql-jdbc-java) \
        >/dev/null 2>&1 || echo "note: could not install libpostgresql-jdbc-java; the JDBC test will skip" >&2
fi
exec python -m pytest "$@"
