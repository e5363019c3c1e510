#!/usr/bin/env bash
# Installs meshd on a blade (Debian 12 or later, as root), from this source tree:
#   - the system packages a node uses (QEMU, iproute2, dnsmasq, nftables, ...);
#   - a virtualenv under PREFIX (default /opt/meshd) with meshd in it, and `meshd`
#     linked onto PATH (BIN_DIR, default /usr/local/bin);
#   - the data dir (default /var/lib/meshd, mode 0700);
#   - the hardened systemd unit (bootstrap/meshd.service), and a sysctl file that keeps
#     bridged guest traffic out of the host's iptables (LAB-NOTES: br_netfilter);
#   - example configs (founding node, joining node, witness) under PREFIX/examples.
# It never starts or enables the service and never creates an identity: the output says
# what to run next (docs/FIRST-CHASSIS.md walks a whole chassis). Idempotent: run it
# again after `git pull` to upgrade; the data dir and a config already there are kept.
#
# Usage: bash bootstrap/install.sh [--prefix DIR] [--bin-dir DIR] [--data-dir DIR]
#            [--unit-dir DIR] [--sysctl-dir DIR] [--python PY] [--no-apt]
#            [--wheel FILE --no-deps]
#   --no-apt    don't install system packages (say which are missing instead)
#   --wheel     install this built meshd wheel instead of building the source tree
#   --no-deps   pip installs meshd alone, not its dependencies (an offline host that
#               provides them another way; the tests use it with --wheel)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/meshd
bin_dir=/usr/local/bin
data_dir=/var/lib/meshd
unit_dir=/etc/systemd/system
sysctl_dir=/etc/sysctl.d
python=python3
apt=1
deps=1
wheel=

die() {
    echo "install: $*" >&2
    exit 1
}

while (($#)); do
    case $1 in
    --prefix) prefix=${2:?--prefix needs a directory} && shift ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory} && shift ;;
    --data-dir) data_dir=${2:?--data-dir needs a directory} && shift ;;
    --unit-dir) unit_dir=${2:?--unit-dir needs a directory} && shift ;;
    --sysctl-dir) sysctl_dir=${2:?--sysctl-dir needs a directory} && shift ;;
    --python) python=${2:?--python needs an interpreter} && shift ;;
    --no-apt) apt=0 ;;
    --no-deps) deps=0 ;;
    --wheel) wheel=${2:?--wheel needs a file} && shift ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown option $1: see bash bootstrap/install.sh --help" ;;
    esac
    shift
done

[[ $(id -u) -eq 0 ]] || die "run me as root (sudo bash bootstrap/install.sh): a node runs VMs, taps and bridges"
for d in "$prefix" "$bin_dir" "$data_dir" "$unit_dir" "$sysctl_dir"; do
    [[ $d == /* ]] || die "$d is not an absolute path: give every directory as /path"
done

# --- system packages ------------------------------------------------------------------
need=()
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || need+=(python3)
"$python" -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v genisoimage >/dev/null 2>&1 || need+=(genisoimage)
command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
command -v dhcp_release >/dev/null 2>&1 || need+=(dnsmasq-utils)
command -v nft >/dev/null 2>&1 || need+=(nftables)
if ((${#need[@]})); then
    if ((apt)) && command -v apt-get >/dev/null 2>&1; then
        echo "install: Debian packages: ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "install: missing ${need[*]}: install them (apt-get install ${need[*]}) or workloads needing them won't be offered" >&2
    fi
fi

# --- the virtualenv and the command on PATH --------------------------------------------
venv=$prefix/venv
if [[ ! -x $venv/bin/python ]]; then
    mkdir -p "$prefix"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
((deps)) || pip+=(--no-deps)
# A copy of the tree, not an editable link: the node must not change when the checkout does.
if [[ -n $wheel ]]; then
    [[ -f $wheel ]] || die "wheel $wheel does not exist"
    "${pip[@]}" --force-reinstall "$wheel"
else
    "${pip[@]}" --upgrade "$src"
fi
"$venv/bin/python" -m compileall -q "$venv/lib" >/dev/null || true
mkdir -p "$bin_dir"
ln -sfn "$venv/bin/meshd" "$bin_dir/meshd"

# --- data dir, unit, sysctl, examples ----------------------------------------------------
install -d -m 0700 "$data_dir"
mkdir -p "$unit_dir" "$sysctl_dir" "$prefix/examples"
sed -e "s#/usr/local/bin/meshd#$bin_dir/meshd#g" -e "s#/var/lib/meshd#$data_dir#g" \
    "$src/bootstrap/meshd.service" >"$unit_dir/meshd.service.tmp"
chmod 0644 "$unit_dir/meshd.service.tmp"
mv "$unit_dir/meshd.service.tmp" "$unit_dir/meshd.service"
install -m 0644 "$src/bootstrap/examples/60-meshd.conf" "$sysctl_dir/60-meshd.conf"
install -m 0644 "$src"/bootstrap/examples/*.toml "$prefix/examples/"
if [[ $sysctl_dir == /etc/sysctl.d ]] && command -v sysctl >/dev/null 2>&1; then
    # The keys exist once br_netfilter is loaded; absent keys are not an error here.
    sysctl -q -e -p "$sysctl_dir/60-meshd.conf" >/dev/null 2>&1 || true
fi
if [[ $unit_dir == /etc/systemd/system && -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi

version=$("$bin_dir/meshd" --version 2>/dev/null || echo "meshd (installed; --version failed: check $venv)")
cat <<EOF
install: $version
  command   $bin_dir/meshd -> $venv/bin/meshd
  data dir  $data_dir (0700)
  unit      $unit_dir/meshd.service (not enabled)
  examples  $prefix/examples/{founding,joining,witness}.toml

Next (docs/FIRST-CHASSIS.md):
  founding node:  meshd init --name blade01 --domain lab.example --listen ADDR:7420
                  cp $prefix/examples/founding.toml $data_dir/meshd.toml   # edit it
  other nodes:    meshd token create            # on the founding node
                  meshd init --name blade02 --domain lab.example --join TOKEN
                  cp $prefix/examples/joining.toml $data_dir/meshd.toml    # edit it
  then:           systemctl enable --now meshd && meshd status
EOF
