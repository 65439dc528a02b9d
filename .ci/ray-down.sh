#!/usr/bin/env bash
# Stop the Ray test cluster that .ci/ray-up.sh started: every process of its session (the pid in
# STATE_DIR/ray.pid is the session id), `ray start --block` first (it drains the node), then SIGTERM and SIGKILL to what is left, 30 s apart. Never `ray stop`,
# which stops every Ray process of the machine.
#
#   .ci/ray-down.sh [STATE_DIR]     (default: $TRPO_LAB_RAY_DIR or /tmp/trpo-lab-ray)
set -uo pipefail

DIR="$(realpath -m "${1:-${TRPO_LAB_RAY_DIR:-/tmp/trpo-lab-ray}}")"
[[ -f "$DIR/ray.pid" ]] || { echo "ray-down: no cluster in $DIR"; exit 0; }
SID="$(cat "$DIR/ray.pid")"

# pids whose session id is ours (not this script's own)
session_pids() {
    ps -eo pid=,sid= | awk -v sid="$SID" -v self="$$" '$2 == sid && $1 != self {print $1}'
}

# `ray start --block` drains the node and stops what it started; then whatever is left
kill -TERM "$SID" 2>/dev/null
for signal in TERM KILL; do
    for _ in $(seq 300); do
        pids="$(session_pids)"
        [[ -z "$pids" ]] && break 2
        sleep 0.1
    done
    echo "ray-down: SIG$signal to what is left after 30 s:" $pids >&2
    # shellcheck disable=SC2086
    kill -"$signal" $pids 2>/dev/null
done
rm -f "$DIR/ray.pid"
echo "ray-down: stopped the cluster in $DIR"
