#!/usr/bin/env bash
# Stop the test cluster that .ci/slurm-up.sh started: cancel its jobs, then stop slurmd,
# slurmctld and munged by the pids in its state directory (nothing else is touched).
#
#   .ci/slurm-down.sh [STATE_DIR]      (default: $TRPO_LAB_SLURM_DIR or /tmp/trpo-lab-slurm)
set -uo pipefail

DIR="$(realpath -m "${1:-${TRPO_LAB_SLURM_DIR:-/tmp/trpo-lab-slurm}}")"
CONF="$DIR/slurm.conf"
[[ -f "$CONF" ]] || { echo "slurm-down: no cluster in $DIR"; exit 0; }
export SLURM_CONF="$CONF"

# stop_daemon PIDFILE NAME: TERM the pid if it is NAME started with our state directory
stop_daemon() {
    local pidfile="$1" name="$2" pid
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name.*$DIR"; then
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.1
    done
    echo "slurm-down: $name ($pid) ignored SIGTERM for 10 s; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null
    rm -f "$pidfile"
}

if [[ -f "$DIR/slurmctld.pid" ]] && timeout 10 scontrol ping >/dev/null 2>&1; then
    timeout 10 scancel --full --quiet --signal=KILL "--user=$(id -un)" 2>/dev/null
    timeout 10 scancel --quiet "--user=$(id -un)" 2>/dev/null
    for _ in $(seq 60); do  # jobs end within KillWait; give them 30 s
        [[ -z "$(timeout 10 squeue -h -o %i 2>/dev/null)" ]] && break
        sleep 0.5
    done
fi
stop_daemon "$DIR/slurmd.pid" slurmd
stop_daemon "$DIR/slurmctld.pid" slurmctld
stop_daemon "$DIR/munged.pid" munged
echo "slurm-down: stopped the cluster in $DIR"
