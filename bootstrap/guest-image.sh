#!/usr/bin/env bash
# Builds a tiny guest for the QEMU driver's tests, benchmarks and demos, cached:
#   vmlinux            the Debian cloud kernel, uncompressed ELF (PVH boot: the fastest
#                      on microvm, ~1.2 s to the marker under TCG)
#   bzImage            the same kernel as shipped (for -M pc/q35)
#   initramfs.cpio.gz  busybox: /init mounts proc/sys/dev, loads the ACPI button and
#                      virtio modules, configures eth0 if there is one, prints
#                      MESHD-GUEST-READY on the console (ttyS0), and powers off on the
#                      ACPI power button
#   base.qcow2         an empty 64 MiB qcow2 base disk (for the q35 + disk image path)
#   kernel-*.deb       the downloaded package, kept so a recipe change needs no download
#
# Usage: bash bootstrap/guest-image.sh [CACHE_DIR]
# Default cache: ${MESHD_CACHE:-$HOME/.cache/meshd}/guest. Prints KEY=path lines at the
# end (also written to CACHE_DIR/guest.env). Idempotent; a few ms when cached, ~8 s to
# build (apt-get download of ~27 MB included). Installs its tools when root and missing.
#
# The kernel package is fetched with `apt-get download` and unpacked with `dpkg-deb -x`
# into a scratch dir: it is never installed on the host. Debian's bzImage is LZ4;
# vmlinux is cut out of it the way the kernel's scripts/extract-vmlinux does (find the
# LZ4 magic, decompress from there).
#
# Guest kernel command line (read by /init):
#   meshd.ip=ADDR/PREFIX   static address on eth0 (meshd.gw=ADDR adds a default route);
#                          prints MESHD-LEASE ip=ADDR mac=MAC src=static up=UPTIME
#   meshd.ip=dhcp          busybox udhcpc on eth0 (in the background, retries every 1 s)
#                          applies the address and prints MESHD-LEASE ip=ADDR mac=MAC
#                          src=dhcp prefix=N router=R dns=D routes=DEST/N,GW;...
#                          asked=UPTIME up=UPTIME on every bound/renew (asked: when udhcpc
#                          started; up: now; the guest's /proc/uptime, for telling boot
#                          from the DHCP exchange), then applies the router, DNS and the
#                          classless static routes (option 121; when present the router
#                          option is ignored, as RFC 3442 says and cloud-init's networkd
#                          does)
# Once eth0 has its address (lease or static), in the background:
#   meshd.meta=1           fetches instance-id and user-data from 169.254.169.254
#                          (`timeout 3 wget`: busybox 1.35's `wget -T` segfaults), prints
#                          MESHD-META instance-id=ID and MESHD-USERDATA TEXT (its lines
#                          joined by spaces), or MESHD-META fail / MESHD-USERDATA fail
#   meshd.ping=IP          then pings IP (1 s apart, up to 60 s): MESHD-PING IP ok|fail
#   meshd.spoof=IP         last, adds IP (another guest's address) as a second address,
#                          asks for instance-id from it and prints MESHD-SPOOF
#                          instance-id=WHAT-CAME (empty when the metadata service answered
#                          nothing), then deletes that address again
#   meshd.http=PORT        busybox httpd on PORT answering `MESHD-HTTP <hostname> <ip>`
# The virtio modules cost ~0.25 s under TCG: with meshd.ip they load before the ready
# marker (the NIC is up when the guest says ready), else right after it.
#
# Power off: QMP `system_powerdown` presses the ACPI power button; the kernel's
# `button` module (a module in Debian's cloud kernel, loaded by /init with `evdev`)
# turns it into an input event, busybox `acpid` maps it to PWRF/00000080, which prints
# MESHD-GUEST-POWEROFF and runs `poweroff -f`. Measured: QEMU exits ~40 ms after the
# button, on microvm (ACPI on, GED) and on q35. Without acpid the button does nothing.
set -euo pipefail

GUEST_VERSION=8 # bump when the initramfs recipe changes
cache=${1:-${MESHD_CACHE:-$HOME/.cache/meshd}/guest}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
stamp=$cache/.built-v$GUEST_VERSION

emit() {
    {
        echo "MESHD_GUEST_VMLINUX=$cache/vmlinux"
        echo "MESHD_GUEST_BZIMAGE=$cache/bzImage"
        echo "MESHD_GUEST_INITRD=$cache/initramfs.cpio.gz"
        echo "MESHD_GUEST_DISK=$cache/base.qcow2"
        echo "MESHD_GUEST_MARKER=MESHD-GUEST-READY"
    } >"$cache/guest.env.tmp"
    mv "$cache/guest.env.tmp" "$cache/guest.env"
    cat "$cache/guest.env"
}

if [[ -f $stamp && -f $cache/vmlinux && -f $cache/bzImage && -f $cache/initramfs.cpio.gz && -f $cache/base.qcow2 ]]; then
    emit
    exit 0
fi

# --- host tools ---------------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
# The initramfs needs the static busybox (the `busybox` package is dynamically linked).
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
command -v genisoimage >/dev/null 2>&1 || need+=(genisoimage)
command -v mkfs.vfat >/dev/null 2>&1 || need+=(dosfstools)
command -v mcopy >/dev/null 2>&1 || need+=(mtools)
command -v lz4 >/dev/null 2>&1 || need+=(lz4)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
if ((${#need[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "guest-image: installing ${need[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "guest-image: missing ${need[*]}; as root: apt-get install --no-install-recommends ${need[*]}" >&2
        exit 1
    fi
fi
busybox=/bin/busybox

# --- kernel -------------------------------------------------------------------------
work=$(mktemp -d "$cache/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [[ -z $kpkg ]]; then
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq
        kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    fi
    [[ -n $kpkg ]] || { echo "guest-image: no linux-image-cloud-amd64 in the apt lists" >&2; exit 1; }
fi
kver=${kpkg#linux-image-}
if [[ ! -f $cache/kernel-$kver.deb ]]; then
    rm -f "$cache"/kernel-*.deb
    # apt-get download writes to the cwd; _apt can't write to root-owned dirs (harmless W:).
    (cd "$work" && apt-get download -q "$kpkg") 2>&1 |
        { grep -v '^W: Download is performed unsandboxed' || true; } >&2
    deb=$(find "$work" -maxdepth 1 -name 'linux-image-*.deb' | head -1)
    [[ -n $deb ]] || { echo "guest-image: apt-get download $kpkg failed" >&2; exit 1; }
    mv "$deb" "$cache/kernel-$kver.deb"
fi
mkdir -p "$work/deb"
dpkg-deb -x "$cache/kernel-$kver.deb" "$work/deb"
cp "$work/deb/boot/vmlinuz-$kver" "$work/bzImage"

# extract-vmlinux: find the first LZ4 frame (legacy magic 02 21 4c 18) and decompress it.
pos=$(LC_ALL=C grep -aboP '\x02\x21\x4c\x18' "$work/bzImage" | head -1 | cut -d: -f1)
[[ -n $pos ]] || { echo "guest-image: no LZ4 payload in the bzImage" >&2; exit 1; }
tail -c+$((pos + 1)) "$work/bzImage" | lz4 -dc >"$work/vmlinux" 2>/dev/null || true
if ! head -c4 "$work/vmlinux" | grep -q $'\x7fELF'; then
    echo "guest-image: could not extract vmlinux from the bzImage" >&2
    exit 1
fi

# --- initramfs ----------------------------------------------------------------------
root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc/acpi/PWRF,lib/modules,usr/share/udhcpc}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
done
mods=$work/deb/lib/modules/$kver/kernel
# Load order matters: the .deb has no modules.dep.
cp "$mods/drivers/acpi/button.ko" "$mods/drivers/input/evdev.ko" "$root/lib/modules/"
order=(
    drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko drivers/virtio/virtio_mmio.ko
    drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci_modern_dev.ko
    drivers/virtio/virtio_pci.ko
    net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko
    drivers/block/virtio_blk.ko
)
: >"$root/lib/modules/order"
for m in "${order[@]}"; do
    if [[ -f $mods/$m ]]; then
        cp "$mods/$m" "$root/lib/modules/"
        basename "$m" >>"$root/lib/modules/order"
    elif [[ -f $mods/$m.xz ]]; then
        xz -dc "$mods/$m.xz" >"$root/lib/modules/$(basename "$m")"
        basename "$m" >>"$root/lib/modules/order"
    fi
done

cat >"$root/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "MESHD-GUEST-POWEROFF" >/dev/console
sync
poweroff -f
EOF
chmod +x "$root/etc/acpi/PWRF/00000080"

cat >"$root/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
# busybox udhcpc's script: $1 is the event; the lease is in the environment. Shell
# builtins where a fork would do (each fork costs ~5 ms under TCG).
case $1 in
deconfig)
    # udhcpc says deconfig before its first DISCOVER too, when /init has just brought
    # eth0 up with no address: nothing to undo until a lease has been bound.
    [ -e /run/ip ] || exit 0
    ip addr flush dev "$interface"
    ip link set "$interface" up
    rm -f /run/ip ;;
bound|renew)
    old=
    [ -e /run/ip ] && read -r old </run/ip
    [ -n "$old" ] && [ "$old" != "$ip" ] && ip addr flush dev "$interface"
    ip addr replace "$ip/${mask:-24}" dev "$interface"
    # The guest holds its lease and answers on it from here: say so at once (as the
    # static path does after its `ip addr add`), then apply the routes it lists.
    routes=
    set -- $staticroutes
    while [ $# -ge 2 ]; do routes="$routes$1,$2;"; shift 2; done
    dnsl=
    for d in $dns; do dnsl="${dnsl:+$dnsl,}$d"; done
    read -r up _ </proc/uptime
    read -r mac <"/sys/class/net/$interface/address"
    read -r asked </run/dhcp-asked
    echo "MESHD-LEASE ip=$ip mac=$mac src=dhcp prefix=${mask:-24} router=${router:--} dns=${dnsl:--} routes=${routes:--} asked=$asked up=$up" >/dev/console
    if [ -n "$staticroutes" ]; then
        # "DEST/N GW DEST/N GW ...": RFC 3442 says ignore the router option then.
        set -- $staticroutes
        while [ $# -ge 2 ]; do
            if [ "$2" = 0.0.0.0 ]; then
                ip route replace "$1" dev "$interface"
            else
                ip route replace "$1" via "$2" dev "$interface"
            fi
            shift 2
        done
    elif [ -n "$router" ]; then
        ip route replace default via "${router%% *}" dev "$interface"
    fi
    for d in $dns; do echo "nameserver $d"; done >/etc/resolv.conf
    echo "$ip" >/run/ip ;;
esac
EOF
chmod +x "$root/usr/share/udhcpc/default.script"

cat >"$root/bin/meshd-after-net" <<'EOF'
#!/bin/sh
# Runs once eth0 has an address (/run/ip): metadata, ping, then spoof (see
# guest-image.sh): while it holds another guest's address, a ping to it would answer
# itself.
arg() { for w in $(cat /proc/cmdline); do case $w in "$1="*) echo "${w#*=}";; esac; done; }
while [ ! -s /run/ip ]; do sleep 0.1; done
ip=$(cat /run/ip)
md=http://169.254.169.254/latest
fetch() { # URL: up to 5 tries (the service may come up after the guest)
    n=0
    while [ $n -lt 5 ]; do
        if timeout 3 wget -q -O /tmp/fetch "$1" 2>/dev/null; then return 0; fi
        n=$((n + 1)); sleep 1
    done
    return 1
}
if [ -n "$(arg meshd.meta)" ]; then
    if fetch "$md/meta-data/instance-id"; then
        echo "MESHD-META instance-id=$(cat /tmp/fetch)" >/dev/console
    else
        echo "MESHD-META fail" >/dev/console
    fi
    if fetch "$md/user-data"; then
        echo "MESHD-USERDATA $(tr '\n' ' ' </tmp/fetch)" >/dev/console
    else
        echo "MESHD-USERDATA fail" >/dev/console
    fi
fi
peer=$(arg meshd.ping)
if [ -n "$peer" ]; then
    n=0; res=fail
    while [ $n -lt 60 ]; do
        if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then res=ok; break; fi
        n=$((n + 1))
    done
    echo "MESHD-PING $peer $res" >/dev/console
fi
spoof=$(arg meshd.spoof)
if [ -n "$spoof" ]; then
    orig=$(ip route show 169.254.169.254/32)
    ip addr add "$spoof/32" dev eth0
    via=$(ip route get 169.254.169.254 | sed -n 's/.* via \([0-9.]*\).*/\1/p')
    if [ -n "$via" ]; then
        ip route replace 169.254.169.254/32 via "$via" dev eth0 src "$spoof"
    else
        ip route replace 169.254.169.254/32 dev eth0 src "$spoof"
    fi
    got=$(timeout 3 wget -q -O - "$md/meta-data/instance-id" 2>/dev/null)
    echo "MESHD-SPOOF instance-id=$got" >/dev/console
    # Give the address back at once: its owner must keep answering for it.
    ip addr del "$spoof/32" dev eth0
    ip route del 169.254.169.254/32 2>/dev/null
    [ -n "$orig" ] && ip route replace $orig
fi
EOF
chmod +x "$root/bin/meshd-after-net"

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
insmod /lib/modules/button.ko
insmod /lib/modules/evdev.ko
acpid -c /etc/acpi -l /dev/null
hostname meshd-guest
ip link set lo up
arg() { for w in $(cat /proc/cmdline); do case $w in "$1="*) echo "${w#*=}";; esac; done; }
virtio() { while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done </lib/modules/order; }
# The virtio modules cost ~0.25 s under TCG: load them before the ready marker only
# when the guest is asked to configure its network, else right after it.
addr=$(arg meshd.ip)
[ -n "$addr" ] && virtio
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    gw=$(arg meshd.gw)
    if [ "$addr" = dhcp ]; then
        read -r up _ </proc/uptime
        echo "$up" >/run/dhcp-asked
        udhcpc -i eth0 -b -t 20 -T 1 -O staticroutes -s /usr/share/udhcpc/default.script >/dev/null 2>&1
    elif [ -n "$addr" ]; then
        ip addr add "$addr" dev eth0
        [ -n "$gw" ] && ip route add default via "$gw"
        read -r up _ </proc/uptime
        read -r mac </sys/class/net/eth0/address
        echo "MESHD-LEASE ip=${addr%/*} mac=$mac src=static up=$up" >/dev/console
        echo "${addr%/*}" >/run/ip
    fi
    port=$(arg meshd.http)
    if [ -n "$port" ]; then
        mkdir -p /www
        (while [ ! -s /run/ip ]; do sleep 0.1; done
         echo "MESHD-HTTP $(hostname) $(cat /run/ip)" >/www/index.html) &
        httpd -p "$port" -h /www
    fi
    [ -n "$addr" ] && meshd-after-net &
fi
echo "MESHD-GUEST-READY" >/dev/console
[ -z "$addr" ] && virtio
while :; do sleep 3600; done
EOF
chmod +x "$root/init"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -6) >"$work/initramfs.cpio.gz"

# --- base disk ----------------------------------------------------------------------
qemu-img create -q -f qcow2 "$work/base.qcow2" 64M

for f in vmlinux bzImage initramfs.cpio.gz base.qcow2; do
    mv -f "$work/$f" "$cache/$f"
done
echo "$kver" >"$cache/kernel-version"
rm -f "$cache"/.built-v*
touch "$stamp"
emit
