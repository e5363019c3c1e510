#!/usr/bin/env bash
# The main job: found a local mesh of meshd daemons on 127.0.0.1, enrol the others with
# single-use tokens, let them find each other (SWIM over sealed UDP), publish and resolve a
# service name through the DHT, then kill -9 a node and watch the mesh detect it. Every daemon is a real process
# with its own data directory, store, unix socket and mTLS port.
#
# Usage: bash bootstrap/demo.sh [--keep]      (--keep: leave the mesh running until Ctrl-C)
# Environment: MESHD_DEMO_DIR (default: a new temp dir), MESHD_DEMO_NODES (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
bash bootstrap/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

keep=0
[[ ${1:-} == --keep ]] && keep=1
dir=${MESHD_DEMO_DIR:-$(mktemp -d -t meshd-demo.XXXXXX)}
nodes=${MESHD_DEMO_NODES:-5}
names=(alpha beta gamma delta epsilon zeta eta theta)
pids=()

workloads=()
cleanup() {
    # Workloads outlive their daemon by design: stop the demo's before the daemons.
    for wid in "${workloads[@]}"; do
        meshd workload stop "$wid" --data-dir "$dir/${names[0]}" >/dev/null 2>&1 || true
    done
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

last=${names[$((nodes - 1))]}
echo
echo "== waiting for every node to see all $nodes members alive (SWIM membership over sealed UDP)"
for _ in $(seq 100); do
    alive=$(meshd peers --json --data-dir "$dir/$last" | python3 -c 'import json,sys; print(sum(p["state"] == "alive" for p in json.load(sys.stdin)))')
    [[ $alive == "$nodes" ]] && break
    sleep 0.1
done
meshd peers --data-dir "$dir/$last"

echo
echo "== ${names[1]} publishes a service; every node resolves it through the DHT"
meshd service add web --port 8080 --data-dir "$dir/${names[1]}"
sleep 0.3
for ((i = 0; i < nodes; i++)); do
    printf '%s resolves @web@*@demo.lab: ' "${names[$i]}"
    meshd resolve @web@*@demo.lab --json --data-dir "$dir/${names[$i]}" |
        python3 -c 'import json,sys; r = json.load(sys.stdin)[0]; print("%(node)s at %(address)s:%(port)s/%(proto)s" % r)'
done

echo
echo "== ${names[0]} submits a workload; the reverse auction places it, its owner runs it"
runner=${names[$((nodes - 1))]}
wid=$(meshd submit --name ticker --cpus 1 --memory 64MiB --node "$runner" --json \
    --command "sh -c 'while true; do echo tick from \$MESHD_WORKLOAD_NAME; sleep 1; done'" \
    --data-dir "$dir/${names[0]}" | python3 -c 'import json,sys; d = json.load(sys.stdin); print(d["workload"])')
workloads+=("$wid")
for _ in $(seq 50); do
    state=$(meshd workloads --json --data-dir "$dir/${names[1]}" | python3 -c "import json,sys; print([w['state'] for w in json.load(sys.stdin) if w['workload'] == '$wid'][0])")
    [[ $state == running ]] && break
    sleep 0.1
done
meshd workloads --data-dir "$dir/${names[1]}"
echo "-- its console, read through ${names[1]} (forwarded to $runner):"
sleep 1.2
meshd workload logs "$wid" --data-dir "$dir/${names[1]}" | tail -2
meshd auctions --data-dir "$dir/${names[0]}"
echo "-- every node's view carries the spec; ${names[2]} shows it from its own copy:"
meshd workload show "$wid" --data-dir "$dir/${names[2]}" | sed -n '/^spec:/,$p'
echo "-- a requirement no node meets is refused with a sentence naming it:"
meshd submit --name needs-sparc --cpus 1 --memory 64MiB --requires arch:sparc64 \
    --data-dir "$dir/${names[0]}" 2>&1 | cut -c1-160 || true

echo
echo "== meshd status on ${names[0]}"
meshd status --data-dir "$dir/${names[0]}"

echo
echo "== kill -9 ${names[1]}: the others detect it and its name stops resolving"
start=$(date +%s.%N)
{ kill -KILL "${pids[1]}" && wait "${pids[1]}"; } 2>/dev/null || true
for _ in $(seq 200); do
    state=$(meshd peers --json --data-dir "$dir/${names[0]}" | python3 -c "import json,sys; print([p['state'] for p in json.load(sys.stdin) if p['name'] == '${names[1]}'][0])")
    [[ $state == dead ]] && break
    sleep 0.05
done
echo "${names[0]} marked ${names[1]} $state after $(python3 -c "import time; print(f'{time.time() - $start:.1f}')")s"
meshd peers --data-dir "$dir/${names[0]}"
if meshd resolve @web@demo.lab --data-dir "$dir/${names[0]}" 2>&1; then
    echo "demo: a dead node's service still resolves" >&2
    exit 1
fi

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
