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
#   meshd.ip=ADDR/PREFIX   static address on eth0 (meshd.gw=ADDR adds a default route)
#   meshd.ip=dhcp          udhcpc on eth0, in the background
# The virtio modules cost ~0.25 s under TCG: with meshd.ip they load before the ready
# marker (the NIC is up when the guest says ready), else right after it.
#
# Power off: QMP `system_powerdown` presses the ACPI power button; the kernel's
# `button` module (a module in Debian's cloud kernel, loaded by /init with `evdev`)
# turns it into an input event, busybox `acpid` maps it to PWRF/00000080, which prints
# MESHD-GUEST-POWEROFF and runs `poweroff -f`. Measured: QEMU exits ~40 ms after the
# button, on microvm (ACPI on, GED) and on q35. Without acpid the button does nothing.
set -euo pipefail

GUEST_VERSION=5 # bump when the initramfs recipe changes
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
case $1 in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "MESHD-GUEST-DHCP $ip" >/dev/console ;;
esac
EOF
chmod +x "$root/usr/share/udhcpc/default.script"

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
        udhcpc -i eth0 -b -q -s /usr/share/udhcpc/default.script >/dev/null 2>&1
    elif [ -n "$addr" ]; then
        ip addr add "$addr" dev eth0
        [ -n "$gw" ] && ip route add default via "$gw"
    fi
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
