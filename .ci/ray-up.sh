#!/usr/bin/env bash
# Start a local Ray test cluster on loopback (a head node with $TRPO_LAB_RAY_CPUS CPUs) in a
# session of its own, so that .ci/ray-down.sh stops exactly its processes (by pid).
#
#   .ci/ray-up.sh [STATE_DIR]       (default: $TRPO_LAB_RAY_DIR or /tmp/trpo-lab-ray)
#   source STATE_DIR/env            (RAY_ADDRESS and the rest a driver needs, see below)
#   .ci/ray-down.sh [STATE_DIR]
#
# Uses the `ray` of the active environment (the [ray] extra, in a virtual environment of its
# own: it downgrades cloudpickle). RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray use 127.0.0.1
# as the node address, so every Ray port listens on loopback only; a driver that connects needs
# it too (otherwise Ray turns 127.0.0.1 into the machine's outside address and waits forever).
# Token authentication with a token of its own (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH): Ray
# 2.60 turns token auth on whenever ~/.ray/auth_token exists, and a driver that connects sends
# a token only when RAY_AUTH_MODE=token, so both sides are told explicitly. STATE_DIR/env holds
# these variables for drivers.
set -euo pipefail

DIR="$(realpath -m "${1:-${TRPO_LAB_RAY_DIR:-/tmp/trpo-lab-ray}}")"
PORT="${TRPO_LAB_RAY_PORT:-26379}"
CPUS="${TRPO_LAB_RAY_CPUS:-2}"
RAY="${RAY:-$(command -v ray || true)}"
[[ -n "$RAY" ]] || { echo "ray-up: no ray on PATH; pip install -e '.[ray]'" >&2; exit 1; }
if [[ -f "$DIR/ray.pid" ]] && kill -0 "$(cat "$DIR/ray.pid")" 2>/dev/null; then
    echo "ray-up: a cluster is already running from $DIR (stop it with .ci/ray-down.sh)" >&2
    exit 1
fi
rm -rf "$DIR"
mkdir -p "$DIR/tmp"
: >"$DIR/ray.log"

python3 -c "import secrets; print(secrets.token_hex(32), end='')" >"$DIR/auth_token"
chmod 600 "$DIR/auth_token"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=token \
    RAY_AUTH_TOKEN_PATH="$DIR/auth_token"
cat >"$DIR/env" <<EOF
export RAY_ADDRESS=127.0.0.1:$PORT RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$DIR/auth_token TRPO_LAB_TEST_RAY_ADDRESS=127.0.0.1:$PORT
EOF
# setsid: the head and everything it starts share one session id, the pid written here
setsid "$RAY" start --head --block --num-cpus="$CPUS" --node-ip-address=127.0.0.1 \
    --port="$PORT" --ray-client-server-port=$((PORT + 1)) --include-dashboard=false \
    --disable-usage-stats --temp-dir="$DIR/tmp" </dev/null >"$DIR/ray.log" 2>&1 &
echo $! >"$DIR/ray.pid"
echo "127.0.0.1:$PORT" >"$DIR/address"

deadline=$((SECONDS + 120))
until grep -q "Ray runtime started" "$DIR/ray.log"; do
    if ! kill -0 "$(cat "$DIR/ray.pid")" 2>/dev/null || ((SECONDS > deadline)); then
        echo "ray-up: the head did not start; its log:" >&2
        tail -n 30 "$DIR/ray.log" >&2
        exit 1
    fi
    sleep 0.5
done
echo "ray-up: cluster up at 127.0.0.1:$PORT ($CPUS CPUs) in $DIR"
echo "ray-up: for a driver: source $DIR/env"
