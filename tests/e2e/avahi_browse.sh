#!/bin/sh
# Runs Debian's avahi-browse inside a test host namespace, with a private D-Bus system
# bus and avahi-daemon (neither exists on the host; both need their /run dirs, which
# we mount privately). Prints avahi-browse's parseable output for _meshd._udp, then
# stops both daemons by their own pids.
# Usage (as root): ip netns exec NS unshare -m --propagation private sh avahi_browse.sh IFACE SECONDS
set -eu
iface=$1
wait_s=$2
mount -t tmpfs tmpfs /run/dbus
mkdir -p /run/avahi-daemon
mount -t tmpfs tmpfs /run/avahi-daemon
dbus_pid=$(dbus-daemon --system --fork --nopidfile --print-pid)
cleanup() {
    avahi-daemon -k 2>/dev/null || true
    kill "$dbus_pid" 2>/dev/null || true
}
trap cleanup EXIT
cat >/run/avahi-daemon/avahi.conf <<CONF
[server]
use-ipv4=yes
use-ipv6=no
allow-interfaces=$iface
enable-dbus=yes
[publish]
disable-publishing=yes
[reflector]
[rlimits]
CONF
avahi-daemon --no-chroot --no-drop-root --no-rlimits -f /run/avahi-daemon/avahi.conf -D
sleep "$wait_s"
timeout 10 avahi-browse --resolve --terminate --parsable _meshd._udp
