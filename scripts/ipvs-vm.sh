#!/usr/bin/env bash
# Boots Debian's stock kernel under qemu (TCG) with an initramfs holding busybox, the IPVS
# modules, ipvsadm, iproute2 and the given payload, runs the payload as root in the VM and
# succeeds iff it passed. The host kernel has no IPVS; this is where the IPVS backend meets a
# real one. The kernel package and the base image are cached in $IPVS_VM_CACHE.
#
#   scripts/ipvs-vm.sh COMMAND [FILE...]
#
# FILEs are copied to / in the VM with the shared libraries they need; COMMAND runs there
# (busybox sh) after the modules are loaded. The serial log is printed to stdout.
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: $0 COMMAND [FILE...]" >&2; exit 2; }
command=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
cache=${IPVS_VM_CACHE:-$HOME/.cache/capstan/ipvs-vm}
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one preparation at a time; parallel runs share the cache

for tool in qemu-system-x86_64 apt-get dpkg xz zstd gzip nft; do
    command -v "$tool" >/dev/null || { echo "ipvs-vm: $tool is missing (scripts/install-deps.sh installs it)" >&2; exit 3; }
done

modules="crc32c_generic ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_sh ip_vs_mh veth dummy nlmon nf_tables nft_fib_ipv4 nft_reject_ipv4 nft_chain_nat nft_masq"
# Bumped whenever what goes into the base image changes, so that cached images are rebuilt.
image_version=3

# Copies a binary and the libraries ldd names into root $2 (paths kept).
copy_with_libs() {
    local bin=$1 root=$2 libpath=${3:-}
    mkdir -p "$root$(dirname "$bin")"
    cp -L "$bin" "$root$bin" 2>/dev/null || cp -L "$bin" "$root/$(basename "$bin")"
    LD_LIBRARY_PATH=$libpath ldd "$bin" 2>/dev/null | awk '/=> \//{print $3} /^[ \t]*\//{print $1}' | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        [[ -e $root$lib ]] || cp -L "$lib" "$root$lib"
    done
}

prepare() {
    local work=$cache/prep
    rm -rf "$work" && mkdir -p "$work/debs" "$work/root"
    local kpkg
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [[ -n $kpkg ]] || { echo "ipvs-vm: cannot resolve Debian's kernel package (apt-get update?)" >&2; exit 3; }
    echo "ipvs-vm: preparing $kpkg (once)"
    (cd "$work/debs" && apt-get download -q -o APT::Sandbox::User=root "$kpkg" busybox-static ipvsadm libnl-3-200 libnl-genl-3-200 libpopt0 >/dev/null)
    for d in "$work"/debs/*.deb; do dpkg -x "$d" "$work/root"; done
    local kv
    kv=$(ls "$work/root/lib/modules")
    local bb=$work/root/bin/busybox
    # Compressed modules (newer kernels): decompress, so that insmod needs no fallback.
    find "$work/root/lib/modules" \( -name '*.ko.xz' -exec xz -d {} + \) -o \( -name '*.ko.zst' -exec zstd -q -d --rm {} + \)
    "$bb" depmod -b "$work/root" "$kv"
    # The bzImage decompresses itself slowly under TCG: boot the ELF vmlinux (PVH entry).
    local vmlinuz=$work/root/boot/vmlinuz-$kv off
    if off=$(grep -abo $'\xfd7zXZ\x00' "$vmlinuz" | head -1 | cut -d: -f1) && [[ -n $off ]]; then
        tail -c +$((off + 1)) "$vmlinuz" | xz -dc >"$cache/vmlinux" 2>/dev/null || true
    else
        off=$(grep -abo $'\x28\xb5\x2f\xfd' "$vmlinuz" | head -1 | cut -d: -f1)
        tail -c +$((off + 1)) "$vmlinuz" | zstd -dc >"$cache/vmlinux" 2>/dev/null || true
    fi
    head -c 4 "$cache/vmlinux" | grep -q ELF || { echo "ipvs-vm: could not extract vmlinux from $vmlinuz" >&2; exit 3; }

    # The base image: busybox, modules and their dependencies, ipvsadm, iproute2, /init.
    local img=$work/img
    mkdir -p "$img"/{bin,sbin,dev,proc,sys,run,tmp,tests,etc,lib/modules/"$kv"}
    cp "$bb" "$img/bin/busybox"
    for applet in $("$bb" --list); do [[ -e $img/bin/$applet ]] || ln -s busybox "$img/bin/$applet"; done
    local dep=$work/root/lib/modules/$kv/modules.dep want=() m
    for m in $modules; do
        local path
        path=$(grep -E "(^|/)$m\.ko:" "$dep" | head -1 | cut -d: -f1)
        [[ -n $path ]] || { echo "ipvs-vm: module $m not in $kpkg" >&2; exit 3; }
        want+=("$path")
        want+=($(grep -E "(^|/)$m\.ko:" "$dep" | head -1 | cut -d: -f2))
    done
    for m in $(printf '%s\n' "${want[@]}" | sort -u); do
        mkdir -p "$img/lib/modules/$kv/$(dirname "$m")"
        cp "$work/root/lib/modules/$kv/$m" "$img/lib/modules/$kv/$m"
    done
    cp "$work/root/lib/modules/$kv"/modules.{order,builtin,builtin.modinfo} "$img/lib/modules/$kv/" 2>/dev/null || true
    "$bb" depmod -b "$img" "$kv"
    # ipvsadm's own libraries come from the debs, the C library from the host (same release).
    mkdir -p "$img/lib/x86_64-linux-gnu"
    for lib in libnl-3.so.200 libnl-genl-3.so.200 libpopt.so.0; do
        find "$work/root" -name "$lib" -exec cp -L {} "$img/lib/x86_64-linux-gnu/" \;
    done
    copy_with_libs "$work/root/sbin/ipvsadm" "$img" "$img/lib/x86_64-linux-gnu"
    mv "$img$work/root/sbin/ipvsadm" "$img/sbin/ipvsadm"
    # busybox's ip cannot name a veth peer: iproute2's, called by full path.
    local ipbin
    ipbin=$(readlink -f "$(command -v ip)")
    copy_with_libs "$ipbin" "$img"
    mv "$img$ipbin" "$img/sbin/ip.iproute2"
    # nft, for the rules the IPVS backend keeps beside the virtual servers.
    local nftbin
    nftbin=$(readlink -f "$(command -v nft)")
    copy_with_libs "$nftbin" "$img"
    [[ $nftbin == /sbin/nft ]] || mv "$img$nftbin" "$img/sbin/nft"
    rm -rf "${img:?}/root" "${img:?}/usr/sbin" "${img:?}/usr/bin"
    mknod -m 600 "$img/dev/console" c 5 1 2>/dev/null || true
    cat >"$img/init" <<'INIT'
#!/bin/sh
export PATH=/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs run /run; mount -t tmpfs tmp /tmp
ip link set lo up # without it IPVS refuses every real server (no local table)
for m in crc32c_generic ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_sh ip_vs_mh veth nlmon nf_tables nft_fib_ipv4 nft_reject_ipv4 nft_chain_nat nft_masq; do modprobe $m || echo "IPVS-VM: modprobe $m failed"; done
modprobe dummy numdummies=0
echo "IPVS-VM: kernel $(uname -r) ready"
cd /
if sh /tests/run.sh; then echo "IPVS-TEST-RESULT: PASS"; else echo "IPVS-TEST-RESULT: FAIL ($?)"; fi
poweroff -f
INIT
    chmod +x "$img/init"
    (cd "$img" && find . | "$bb" cpio -o -H newc 2>/dev/null | gzip -1 >"$cache/base.img")
    cp "$bb" "$cache/busybox"
    echo "$kpkg" >"$cache/kernel"
    echo "$image_version" >"$cache/version"
    rm -rf "$work"
}

[[ -s $cache/vmlinux && -s $cache/base.img && -s $cache/kernel && -x $cache/busybox && $(cat "$cache/version" 2>/dev/null) == "$image_version" ]] || prepare
exec 9>&-

# The overlay: the payload files with their libraries, and the command as /tests/run.sh.
run=$(mktemp -d)
trap 'rm -rf "$run"' EXIT
ov=$run/overlay
mkdir -p "$ov/tests"
for f in "$@"; do
    copy_with_libs "$(readlink -f "$f")" "$ov"
    mv "$ov$(readlink -f "$f")" "$ov/$(basename "$f")"
done
printf '%s\n' "$command" >"$ov/tests/run.sh"
(cd "$ov" && find . | "$cache/busybox" cpio -o -H newc 2>/dev/null | gzip -1 >"$run/overlay.img")
cat "$cache/base.img" "$run/overlay.img" >"$run/initrd.img"

echo "ipvs-vm: booting $(cat "$cache/kernel") under qemu (TCG)"
timeout "${IPVS_VM_TIMEOUT:-900}" qemu-system-x86_64 -accel tcg -m "${IPVS_VM_MEMORY:-1024M}" -smp 1 -nographic -nic none -no-reboot \
    -kernel "$cache/vmlinux" -initrd "$run/initrd.img" \
    -append 'console=ttyS0 panic=-1 quiet cryptomgr.notests' </dev/null >"$run/serial.log" 2>&1 || true
cat "$run/serial.log"
grep -q 'IPVS-TEST-RESULT: PASS' "$run/serial.log"
