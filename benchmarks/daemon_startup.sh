#!/usr/bin/env bash
# Start-up time of each daemon the tests past one machine use (docs/past-one-machine.md), three times each:
# scripts/postgres.sh start (initdb + start + createdb, a fresh cluster), scripts/slurm.sh start (munge, slurmctld,
# slurmd to an idle node), `make server DB=postgres` and `make server` (SQLite) to /health answering (a fresh store:
# MLflow migrates it), and a Ray head plus a second node. Run as root from the project root; prints one line each.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python)}
now() { date +%s%N; }
secs() { local ms=$((($(now) - $1) / 1000000)); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }
free_port() { "$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in 1 2 3; do
    dir=$(mktemp -d /tmp/bench-pg.XXXX); chmod 755 "$dir"; t=$(now)
    POSTGRES_FSYNC=off scripts/postgres.sh start "$dir" >/dev/null
    echo "postgres.sh start (fresh cluster): $(secs "$t") s"
    scripts/postgres.sh stop "$dir"; rm -rf "$dir"
done
if [ -x /usr/sbin/slurmctld ]; then
    for i in 1 2 3; do
        dir=$(mktemp -d /tmp/bench-slurm.XXXX); t=$(now)
        scripts/slurm.sh start "$dir" >/dev/null 2>&1
        echo "slurm.sh start (munged, slurmctld, slurmd to an idle node): $(secs "$t") s"
        scripts/slurm.sh stop "$dir"; rm -rf "$dir"
    done
fi
for db in postgres sqlite; do
    for i in 1 2; do
        dir=$(mktemp -d /tmp/bench-server.XXXX); chmod 755 "$dir"; port=$(free_port); t=$(now)
        (cd "$dir" && exec setsid make --no-print-directory -f "$OLDPWD/Makefile" server DB=$db PORT=$port \
            PG_DIR="$dir/pg" VIRTUAL_ENV="$(dirname "$(dirname "$PY")")" SERVER_ARGS="--workers 2" >"$dir/log" 2>&1) &
        until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.2; done
        echo "make server DB=$db (fresh store) to /health: $(secs "$t") s"
        kill -9 -- -"$(ps -o pgid= -p $! | tr -d ' ')" 2>/dev/null || true; wait $! 2>/dev/null || true
        [ ! -d "$dir/pg" ] || scripts/postgres.sh stop "$dir/pg"; rm -rf "$dir"
    done
done
