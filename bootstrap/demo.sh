#!/usr/bin/env bash
# The main job in one command. As root: installs what it needs (bootstrap/setup.sh with
# dnsmasq and nftables, QEMU, dig, the sushy-tools emulator, the test guest), then
# runs bootstrap/lab.py: three blades as network namespaces on a shared L2 segment, the
# sushy-tools emulator as their BMCs, a mesh founded and joined with tokens, a network,
# two QEMU guests placed by auction (DHCP and metadata from meshd, their console lines
# shown), a service name resolved to a guest (meshd resolve, dig against meshd's DNS),
# then a blade cut off: the quorum fences it through its BMC and its guest comes back on
# a survivor with the same address. Each step is narrated with its time; the timings go
# to $MESHD_LAB_DIR/timings.jsonl as JSON lines. The lab stays up for exploring (it
# prints how) until `bash bootstrap/demo.sh down`, which stops every process and removes
# every namespace and file it made, by their names.
#
# Without root (or with MESHD_DEMO=loopback) it runs bootstrap/demo-loopback.sh instead:
# five daemons on 127.0.0.1, the process driver, a blade fenced through its BMC.
#
# Usage: bash bootstrap/demo.sh [up|down|--keep]
#   --keep: the loopback demo waits for Ctrl-C; the root lab stays up until `down` anyway.
# Environment: MESHD_LAB_DIR (default /tmp/meshd-lab; keep it short: QMP sockets live
# under it), MESHD_LAB_PREFIX (the namespaces' name prefix, default mlab-).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${MESHD_LAB_DIR:-/tmp/meshd-lab}
prefix=${MESHD_LAB_PREFIX:-mlab-}
action=${1:-up}

if [[ $(id -u) -ne 0 || ${MESHD_DEMO:-} == loopback ]]; then
    if [[ $action == down ]]; then
        echo "demo: nothing to take down: the loopback demo stops its daemons when it ends"
        exit 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "demo: not root, so no namespaces, bridges or QEMU guests: running the loopback"
        echo "      demo (5 daemons on 127.0.0.1, the process driver); run as root for the lab"
    fi
    exec bash bootstrap/demo-loopback.sh "$@"
fi

lab_namespaces() { # this lab's namespaces, by their names only
    ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${prefix}(sw|bmc|probe|b[0-9]+)\$" || true
}

down() {
    if [[ -f $dir/lab.pid ]]; then
        pid=$(cat "$dir/lab.pid")
        if kill -TERM "$pid" 2>/dev/null; then
            echo "demo: stopping the lab (pid $pid): daemons, guests, BMC emulator, namespaces"
            for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # Whatever is left (the lab killed, or stopped half-way): its namespaces' processes
    # by pid, then the namespaces, by this lab's names.
    for ns in $(lab_namespaces); do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    done
    for ns in $(lab_namespaces); do ip netns del "$ns" 2>/dev/null || true; done
    if [[ -f $dir/.meshd-lab ]]; then
        rm -rf "$dir"
    elif [[ -e $dir ]]; then
        echo "demo: $dir is not a lab directory (no .meshd-lab in it): left alone" >&2
    fi
    echo "demo: the lab is down"
}

case $action in
down) down; exit 0 ;;
up | --keep) ;;
*) echo "usage: bash bootstrap/demo.sh [up|down|--keep]" >&2; exit 2 ;;
esac

if [[ -f $dir/lab.pid ]] && kill -0 "$(cat "$dir/lab.pid")" 2>/dev/null; then
    echo "demo: a lab is already up (pid $(cat "$dir/lab.pid"), $dir); bash bootstrap/demo.sh down first" >&2
    exit 1
fi
[[ -e $dir || -n $(lab_namespaces) ]] && down >/dev/null

t0=$(date +%s.%N)
echo "== installing what the lab needs (bootstrap/setup.sh, QEMU, dig, the BMC emulator, the guest)"
bash bootstrap/setup.sh # as root: also dnsmasq and nftables, for the guests' networks
need_apt=() # what the lab needs beyond that (guest-image.sh installs its own tools)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-system-x86)
command -v dig >/dev/null 2>&1 || need_apt+=(dnsutils)
command -v sysctl >/dev/null 2>&1 || need_apt+=(procps)
if ((${#need_apt[@]})); then
    echo "demo: installing Debian packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
bash bootstrap/sushy-venv.sh
bash bootstrap/guest-image.sh >/dev/null
install_s=$(python3 -c "import time; print(f'{time.time() - $t0:.2f}')")
echo "   (install: ${install_s}s)"

mkdir -p "$dir"
touch "$dir/.meshd-lab"
: >"$dir/lab.out" # before tail opens it
# Detached (its own session): the lab outlives this script and a closed terminal; it is
# the blades' daemons' parent and their power switch until `down` sends it SIGTERM.
MESHD_LAB_T0=$t0 MESHD_LAB_INSTALL_S=$install_s \
    setsid .venv/bin/python bootstrap/lab.py "$dir" "$prefix" >"$dir/lab.out" 2>&1 </dev/null &
lab_pid=$!
trap 'echo; echo "demo: the lab goes on in the background; bash bootstrap/demo.sh down removes it"; kill "$tail_pid" 2>/dev/null; exit 130' INT
tail -n +1 -f "$dir/lab.out" &
tail_pid=$!
while [[ ! -f $dir/ready && ! -f $dir/failed ]] && kill -0 "$lab_pid" 2>/dev/null; do
    sleep 0.2
done
sleep 0.5 # tail's last lines
kill "$tail_pid" 2>/dev/null || true
wait "$tail_pid" 2>/dev/null || true
if [[ ! -f $dir/ready ]]; then
    echo "demo: the lab failed (its output: $dir/lab.out; daemons' logs: $dir/blade*/meshd.log)" >&2
    echo "      bash bootstrap/demo.sh down removes what is left" >&2
    exit 1
fi
