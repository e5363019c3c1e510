#!/usr/bin/env bash
# Installs what meshd needs on a Debian machine: system packages (when root and
# missing), a virtualenv in .venv, and meshd with its dev tools. Idempotent and quick
# when nothing changed. Usage: bash bootstrap/setup.sh [--test]
# --test also installs what the end-to-end tests use (avahi-browse with its daemon and
# D-Bus, run inside test namespaces only).
set -euo pipefail
cd "$(dirname "$0")/.."
for_tests=0
[[ ${1:-} == --test ]] && for_tests=1

need_apt=()
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || need_apt+=(python3)
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [[ $(id -u) -eq 0 ]]; then
    # Guests' networking (meshd.shell.guests): DHCP, lease release, the bridge guard
    command -v dnsmasq >/dev/null 2>&1 || need_apt+=(dnsmasq-base)
    command -v dhcp_release >/dev/null 2>&1 || need_apt+=(dnsmasq-utils)
    command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
fi
if ((for_tests)) && [[ $(id -u) -eq 0 ]]; then
    command -v avahi-browse >/dev/null 2>&1 || need_apt+=(avahi-utils)
    command -v avahi-daemon >/dev/null 2>&1 || need_apt+=(avahi-daemon)
    command -v dbus-daemon >/dev/null 2>&1 || need_apt+=(dbus)
    # QEMU workloads and the test guest (bootstrap/guest-image.sh)
    command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-system-x86)
    command -v qemu-img >/dev/null 2>&1 || need_apt+=(qemu-utils)
    [[ -x /bin/busybox ]] || need_apt+=(busybox-static)
    command -v genisoimage >/dev/null 2>&1 || need_apt+=(genisoimage)
    command -v lz4 >/dev/null 2>&1 || need_apt+=(lz4)
    command -v cpio >/dev/null 2>&1 || need_apt+=(cpio)
    # fence_redfish: the independent Redfish client the BMC tests and benchmark compare with
    command -v fence_redfish >/dev/null 2>&1 || need_apt+=(fence-agents)
    # cloud-init's own EC2 and OpenStack crawlers read meshd's metadata service (never run
    # as a service here: policy-rc.d below, and no systemd boots this machine)
    [[ -d /usr/lib/python3/dist-packages/cloudinit ]] || need_apt+=(cloud-init)
    # promtool checks /metrics; zsh runs the generated completion script
    command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
    command -v zsh >/dev/null 2>&1 || need_apt+=(zsh)
    command -v dig >/dev/null 2>&1 || need_apt+=(dnsutils)  # asks meshd's DNS server
    command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)  # shows `meshd ui`
    # systemd-analyze rates the unit's hardening (tests/integration/test_install.py)
    command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
fi

if ((${#need_apt[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian packages: ${need_apt[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        # Never start the services we install (avahi-daemon would announce this host on
        # the real LAN): the tests run their own copies inside test namespaces only.
        policy=/usr/sbin/policy-rc.d
        own_policy=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
        fi
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
        ((own_policy)) && rm -f "$policy"
    else
        echo "setup: missing ${need_apt[*]}; install them (as root: apt-get install ${need_apt[*]})" >&2
        exit 1
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
stamp=.venv/.meshd-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    echo "$want" >"$stamp"
fi
# Bytecode, as an installed package has it: an editable install leaves none, and where
# PYTHONDONTWRITEBYTECODE is set every daemon would compile every module at each start.
.venv/bin/python -m compileall -q meshd >/dev/null
