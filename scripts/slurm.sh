#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for CI and the tests of --executor slurm (tests/test_slurm.py).
#
#   scripts/slurm.sh start [DIR]   munged, slurmctld and slurmd, configured in DIR (default /tmp/harness-slurm);
#                                  waits until the node is idle, then prints `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm.sh stop [DIR]    stops the three daemons it started, by their PID files
#
# Debian's packages (apt-get install slurmctld slurmd munge), started by hand as root (no systemd):
# ProctrackType=proctrack/linuxproc and TaskPlugin=task/none need no cgroups; SlurmUser=root. Requeued jobs (a
# preemption) start again after cred_expire, 10 s here (SLURM's default is 120 s). No accounting (slurmdbd): a task
# that dies without a result is found by --executor slurm itself (squeue, and the runs' heartbeats).
# Clients (sbatch, squeue, the tests) find this cluster through SLURM_CONF.
set -euo pipefail

action=${1:-}
dir=${2:-/tmp/harness-slurm}
case $action in start | stop) ;; *) echo "usage: $0 start|stop [DIR]" >&2; exit 2 ;; esac
if [ "$(id -u)" != 0 ]; then
    echo "$0: starts SLURM's daemons as root (SlurmUser=root); run it with sudo" >&2
    exit 1
fi
for daemon in munged slurmctld slurmd; do
    if ! command -v "$daemon" >/dev/null && [ ! -x "/usr/sbin/$daemon" ]; then
        echo "$0: no $daemon; on Debian/Ubuntu: apt-get install slurmctld slurmd munge" >&2
        exit 1
    fi
done
export PATH=$PATH:/usr/sbin
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
export SLURM_CONF=$dir/slurm.conf

stop_pidfile() {  # the daemon whose PID the file holds, if it is still that program
    local file=$1 name=$2
    [ -f "$file" ] || return 0
    local pid
    pid=$(cat "$file")
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$file"
}

if [ "$action" = stop ]; then
    stop_pidfile "$dir/slurmd.pid" slurmd
    stop_pidfile "$dir/slurmctld.pid" slurmctld
    stop_pidfile "$dir/munged.pid" munged
    exit 0
fi

started=$(date +%s%N)
host=$(hostname -s)
cpus=$(nproc)
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
chmod 755 "$dir"  # munged runs as the munge user: it must reach its socket folder
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chown munge:munge "$dir/munge"
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
cat >"$SLURM_CONF" <<EOF
ClusterName=harness
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=30
MinJobAge=600
SchedulerParameters=sched_interval=1
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF

if ! [ -S "$dir/munge/munge.socket" ] || ! munge -n -S "$dir/munge/munge.socket" >/dev/null 2>&1; then
    runuser -u munge -- munged --socket="$dir/munge/munge.socket" --pid-file="$dir/munge/munged.pid" \
        --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
    cp "$dir/munge/munged.pid" "$dir/munged.pid"
fi
scontrol ping >/dev/null 2>&1 || slurmctld -c -f "$SLURM_CONF"  # -c: a fresh state (no jobs of an earlier run)
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
[ -f "$dir/slurmd.pid" ] && kill -0 "$(cat "$dir/slurmd.pid")" 2>/dev/null || slurmd -f "$SLURM_CONF"
for _ in $(seq 300); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    case $state in idle* | mixed* | allocated*) break ;; esac
    sleep 0.1
done
case $state in
idle* | mixed* | allocated*) ;;
*)
    echo "$0: the node did not come up (state: ${state:-none}); see $dir/slurmctld.log, $dir/slurmd.log" >&2
    exit 1
    ;;
esac
took_ms=$((($(date +%s%N) - started) / 1000000))
echo "# SLURM up in $((took_ms / 1000)).$(printf %03d $((took_ms % 1000))) s (node $host: $state, $cpus CPUs)" >&2
echo "export SLURM_CONF=$SLURM_CONF"
