#!/usr/bin/env bash
# The main job: found a local mesh of meshd daemons on 127.0.0.1, enrol the others with
# single-use tokens, let them find each other (SWIM over sealed UDP), publish and resolve a
# service name through the DHT, place and run a workload by auction, give every blade a
# Redfish BMC (the sushy-tools emulator standing in for iLO), then cut the power of the
# workload's blade and watch the others fence it through its BMC by quorum and run its
# workload again. Every daemon is a real process with its own data directory, store,
# unix socket and mTLS port.
#
# bootstrap/demo.sh runs this when not root (or with MESHD_DEMO=loopback); as root it
# runs the namespace lab instead (bootstrap/lab.py).
# Usage: bash bootstrap/demo-loopback.sh [--keep]   (--keep: leave the mesh running until Ctrl-C)
# Environment: MESHD_DEMO_DIR (default: a new temp dir), MESHD_DEMO_NODES (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
bash bootstrap/setup.sh
bash bootstrap/sushy-venv.sh
export PATH="$PWD/.venv/bin:$PATH"

keep=0
[[ ${1:-} == --keep ]] && keep=1
dir=${MESHD_DEMO_DIR:-$(mktemp -d -t meshd-demo.XXXXXX)}
nodes=${MESHD_DEMO_NODES:-5}
names=(alpha beta gamma delta epsilon zeta eta theta)
pids=()
declare -A pid_of
bmc_pid=
ctl=${names[0]}  # the node the demo asks (another, once this one's blade loses power)

workloads=()
cleanup() {
    # Workloads outlive their daemon by design: stop the demo's before the daemons.
    for wid in "${workloads[@]}"; do
        meshd workload stop "$wid" --data-dir "$dir/$ctl" >/dev/null 2>&1 || true
    done
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n $bmc_pid ]]; then kill -TERM "$bmc_pid" 2>/dev/null || true; wait "$bmc_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

start() { # start NAME: run the daemon, wait until its API answers
    local name=$1
    meshd run --data-dir "$dir/$name" --preset local --cpus 4 --memory 2GiB --disk 20GiB \
        2>"$dir/$name.log" &
    pids+=($!)
    pid_of[$name]=$!
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
read -r wid runner < <(meshd submit --name ticker --cpus 1 --memory 64MiB --json \
    --command "sh -c 'while true; do echo tick from \$MESHD_WORKLOAD_NAME; sleep 1; done'" \
    --service tick:9000 --data-dir "$dir/${names[0]}" |
    python3 -c 'import json,sys; d = json.load(sys.stdin); print(d["workload"], d["owner"])')
workloads+=("$wid")
# Another node than the owner answers from here on: the owner's blade loses power below.
observer=${names[1]}
[[ $runner == "$observer" ]] && observer=${names[2]}
ctl=$observer
wait_state() { # wait_state STATE GENERATION: until the observer sees the ticker so
    for _ in $(seq 100); do
        meshd workloads --json --data-dir "$dir/$observer" | python3 -c "
import json, sys
w = [w for w in json.load(sys.stdin) if w['workload'] == '$wid'][0]
sys.exit(w['state'] != '$1' or w['generation'] != $2)" && return 0
        sleep 0.1
    done
    return 1
}
wait_state running 1
meshd workloads --data-dir "$dir/$observer"
echo "-- its console, read through $observer (forwarded to $runner):"
sleep 1.2
meshd workload logs "$wid" --data-dir "$dir/$observer" | tail -2
meshd auctions --data-dir "$dir/${names[0]}"
echo "-- every node's view carries the spec; ${names[2]} shows it from its own copy:"
meshd workload show "$wid" --data-dir "$dir/${names[2]}" | sed -n '/^spec:/,$p'
echo "-- a requirement no node meets is refused with a sentence naming it:"
meshd submit --name needs-sparc --cpus 1 --memory 64MiB --requires arch:sparc64 \
    --command "sleep 60" --data-dir "$dir/${names[0]}" 2>&1 | cut -c1-160 || true

echo
echo "== meshd status on ${names[0]}"
meshd status --data-dir "$dir/${names[0]}"

echo
echo "== every blade gets a Redfish BMC (one sushy-tools emulator stands in for their iLOs)"
mkdir -p "$dir/bmc"
python bootstrap/demo_bmcs.py "$dir/bmc" "${names[@]:0:$nodes}" >"$dir/bmc.log" 2>&1 &
bmc_pid=$!
for _ in $(seq 300); do [[ -f $dir/bmc/url ]] && break; sleep 0.1; done
url=$(cat "$dir/bmc/url")
for ((i = 0; i < nodes; i++)); do
    meshd bmc set --url "$url" --user "$(cat "$dir/bmc/user")" --password-file "$dir/bmc/password" \
        --system "blade-${names[$i]}" --ca-file "$dir/bmc/ca.pem" --data-dir "$dir/${names[$i]}" >/dev/null
done
meshd bmc check --data-dir "$dir/$runner"
power() { # power NAME: the emulator's PowerState of NAME's blade, read with curl
    curl -s -L --cacert "$dir/bmc/ca.pem" -u "$(cat "$dir/bmc/user"):$(cat "$dir/bmc/password")" \
        "$url/redfish/v1/Systems/blade-$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["PowerState"])'
}

echo
echo "== $runner loses power (kill -9 of its daemon and its workload): the others vote, one"
echo "   powers it off through its BMC, and its workload runs again on a survivor"
sleep 1  # every member holds every BMC (shared over mTLS when set)
start=$(date +%s.%N)
wpid=$(meshd workload show "$wid" --json --data-dir "$dir/$observer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["detail"].rsplit(" ", 1)[1])')
{ kill -KILL "${pid_of[$runner]}" && wait "${pid_of[$runner]}"; } 2>/dev/null || true
kill -KILL -- "-$wpid" 2>/dev/null || kill -KILL "$wpid" 2>/dev/null || true
for _ in $(seq 300); do
    state=$(meshd peers --json --data-dir "$dir/$observer" | python3 -c "import json,sys; print([p['state'] for p in json.load(sys.stdin) if p['name'] == '$runner'][0])")
    [[ $state == fenced || $state == fence-failed ]] && break
    sleep 0.05
done
echo "$observer holds $runner $state after $(python3 -c "import time; print(f'{time.time() - $start:.1f}')")s; its BMC says $(power "$runner")"
if [[ $state != fenced ]]; then
    echo "demo: $runner was not fenced; see meshd fence status" >&2
    meshd fence status --data-dir "$dir/$observer" >&2
    exit 1
fi
meshd peers --data-dir "$dir/$observer"
meshd fence status --data-dir "$dir/$observer"
if ! wait_state running 2; then
    echo "demo: the fenced blade's workload did not run again" >&2
    exit 1
fi
echo "-- the workload again, at generation 2, $(python3 -c "import time; print(f'{time.time() - $start:.1f}')")s after the power cut:"
meshd workloads --data-dir "$dir/$observer"
meshd resolve @tick@demo.lab --data-dir "$dir/$observer"

echo
echo "== the roster as $observer knows it"
meshd node ls --data-dir "$dir/$observer"

if ((keep)); then
    echo
    echo "mesh running; try: MESHD_DATA_DIR=$dir/$observer meshd status   (Ctrl-C stops it)"
    wait
fi
echo
echo "== stopping the mesh (SIGTERM); data stays in $dir"
