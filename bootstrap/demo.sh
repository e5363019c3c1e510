#!/usr/bin/env bash
# The main job: found a local mesh of three meshd daemons on 127.0.0.1, enrol two of them
# with single-use tokens, and show what each node knows. Every daemon is a real process
# with its own data directory, store, unix socket and mTLS port.
#
# Usage: bash bootstrap/demo.sh [--keep]      (--keep: leave the mesh running until Ctrl-C)
# Environment: MESHD_DEMO_DIR (default: a new temp dir), MESHD_DEMO_NODES (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
bash bootstrap/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

keep=0
[[ ${1:-} == --keep ]] && keep=1
dir=${MESHD_DEMO_DIR:-$(mktemp -d -t meshd-demo.XXXXXX)}
nodes=${MESHD_DEMO_NODES:-3}
names=(alpha beta gamma delta epsilon zeta eta theta)
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

start() { # start NAME: run the daemon, wait until its API answers
    local name=$1
    meshd run --data-dir "$dir/$name" --preset local --cpus 4 --memory 2GiB --disk 20GiB \
        2>"$dir/$name.log" &
    pids+=($!)
    for _ in $(seq 100); do
        meshd status --data-dir "$dir/$name" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "demo: $name did not become ready; its log:" >&2
    tail -20 "$dir/$name.log" >&2
    exit 1
}

echo "== founding mesh demo.lab with ${names[0]} (data in $dir)"
meshd init --name "${names[0]}" --domain demo.lab --listen 127.0.0.1:0 --data-dir "$dir/${names[0]}"
start "${names[0]}"

for ((i = 1; i < nodes; i++)); do
    name=${names[$i]}
    echo "== ${names[0]} issues a join token; $name enrols with it"
    token=$(meshd token create --ttl 10m --data-dir "$dir/${names[0]}")
    meshd init --name "$name" --join "$token" --listen 127.0.0.1:0 --data-dir "$dir/$name"
    start "$name"
done

echo
echo "== the same token a second time is refused:"
if meshd init --name intruder --join "$token" --data-dir "$dir/intruder"; then
    echo "demo: a used token was accepted" >&2
    exit 1
fi

addr=$(meshd status --json --data-dir "$dir/${names[0]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["address"])')
echo
echo "== the mTLS API at $addr refuses a client without a mesh certificate:"
curl -sk "https://$addr/v1/node" || true
echo

for ((i = 0; i < nodes; i++)); do
    echo
    echo "== meshd status on ${names[$i]}"
    meshd status --data-dir "$dir/${names[$i]}"
done
echo
echo "== the roster as ${names[0]} (the seed and CA holder) knows it"
meshd node ls --data-dir "$dir/${names[0]}"

if ((keep)); then
    echo
    echo "mesh running; try: MESHD_DATA_DIR=$dir/${names[0]} meshd status   (Ctrl-C stops it)"
    wait
fi
echo
echo "== stopping the mesh (SIGTERM); data stays in $dir"
