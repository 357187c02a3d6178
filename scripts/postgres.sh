#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for an MLflow tracking server: `make server DB=postgres`, CI and the tests.
#
#   scripts/postgres.sh start DIR [DB]   initdb DIR (first time), start it, create database DB (default mlflow);
#                                        prints the SQLAlchemy URI to give `mlflow server --backend-store-uri`
#   scripts/postgres.sh stop DIR         stop it (fast shutdown); DIR and its data stay
#   scripts/postgres.sh uri DIR [DB]     print the URI again
#
# The server listens on a Unix socket inside DIR only (no TCP port, so several clusters never collide), with
# trust authentication for its own OS user: fine for one machine's tracking server, not for a shared database
# (give that one's URI to `make server DB_URI=postgresql://user:password@host/db` instead). PostgreSQL refuses
# to run as root; as root the cluster is owned by and run as the `postgres` user (Debian's package makes it).
# POSTGRES_FSYNC=off (tests, CI) trades crash safety for speed.
# Needs PostgreSQL's server binaries (Debian: apt-get install postgresql) and, for MLflow, psycopg2
# (pip install 'nanoko-harness[server]').
set -euo pipefail

usage() { echo "usage: $0 start|stop|uri DIR [DB]" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
db=${3:-mlflow}

bindir=""
for candidate in "$(command -v pg_ctl 2>/dev/null | xargs -r readlink -f | xargs -r dirname)" /usr/lib/postgresql/*/bin; do
    if [ -n "$candidate" ] && [ -x "$candidate/pg_ctl" ] && [ -x "$candidate/createdb" ]; then
        bindir=$candidate
        break
    fi
done
if [ -z "$bindir" ]; then
    echo "$0: no PostgreSQL server binaries (initdb, pg_ctl); on Debian/Ubuntu: sudo apt-get install postgresql" >&2
    exit 1
fi

if [ "$(id -u)" = 0 ]; then
    owner=postgres
    as_owner() { runuser -u postgres -- "$@"; }
else
    owner=$(id -un)
    as_owner() { "$@"; }
fi
data=$dir/data
socket=$dir

uri() { echo "postgresql+psycopg2://$owner@/$db?host=$socket"; }

case $action in
start)
    chown "$owner" "$dir"
    if ! as_owner test -w "$dir"; then
        echo "$0: $dir: the $owner user cannot reach it (a parent folder is private); pick a folder $owner can enter" >&2
        exit 1
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
        as_owner "$bindir/initdb" -D "$data" -U "$owner" --auth=trust --encoding=UTF8 --no-instructions >"$dir/initdb.log"
    fi
    if ! as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        as_owner "$bindir/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -s \
            -o "-c listen_addresses='' -c unix_socket_directories='$socket' -c fsync=${POSTGRES_FSYNC:-on}" start
    fi
    if ! as_owner "$bindir/psql" -h "$socket" -U "$owner" -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
        as_owner "$bindir/createdb" -h "$socket" -U "$owner" "$db"
    fi
    uri
    ;;
stop)
    if [ -f "$data/postmaster.pid" ]; then
        as_owner "$bindir/pg_ctl" -D "$data" -m fast -w -s stop
    fi
    ;;
uri) uri ;;
*) usage ;;
esac
