#!/usr/bin/env bash
# `make test-pmem`: daxlab on real kernel persistent memory, in QEMU guests under software emulation.
#
# Builds daxlab with the Swift standard library linked in, packs it with its shared libraries,
# ndctl, mke2fs, busybox and the nvdimm/dax kernel modules into an initramfs, and boots Debian's
# kernel three times (scripts/pmem-guest/init is the guest's PID 1):
#   nvdimm  an emulated NVDIMM (fresh image): labels, an fsdax namespace mounted ext4 -o dax and a
#           devdax namespace (4 KiB aligned); daxlab devices, info (is-pmem, MAP_SYNC), mkfs, a file
#           round trip and a race per policy on /dev/daxX.Y and on a file on the fs-dax mount, with
#           simulated devices, then with the kernel's: long-term pins on devdax, the refusal of
#           long-term pins on fs-dax, short-term (O_DIRECT from a brd RAM disk) on fs-dax; RDMA
#           devices over soft-RoCE (rdma_rxe on lo) on devdax, their refusal on fs-dax, the ODP
#           answer, and perftest's ib_write_bw on the devdax device; daxlab mmap-check on both
#           (windows the kernel faults, huge faults, EFAULT past the end of file)
#   reboot  the same NVDIMM image again: what the first boot wrote must mount, fsck and read back
#   memmap  memmap= legacy e820 pmem: one region made fsdax (ext4 -o dax), one devdax; the same
#           round trips, races (RDMA's too) and mmap-checks; then the devdax one aligned to 2 MiB, and
#           mmap-check there (windows that map whole 2 MiB runs only)
# The guest prints one line per verdict; this script checks every expected one, and fails on any
# FAIL, on a missing end marker or on a timeout.
#
# Usage: scripts/test-pmem.sh [--if-possible]
#   --if-possible  when QEMU or a kernel cannot be had here, say so in one line and exit 0
# Environment: RACE_SECONDS (per race, default 2), BOOT_TIMEOUT (per boot, default 600 s),
#   PMEM_WORK (work folder, default .build-pmem), SWIFT (default swift), PMEM_STAGES (the boots,
#   default "nvdimm reboot memmap"; reboot needs nvdimm before it; only those are judged).
set -uo pipefail
cd "$(dirname "$0")/.."

if_possible=false
case "${1:-}" in
    --if-possible) if_possible=true ;;
    "") ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--if-possible]" >&2; exit 2 ;;
esac

WORK=${PMEM_WORK:-.build-pmem}
RACE_SECONDS=${RACE_SECONDS:-2}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-600}
SWIFT=${SWIFT:-swift}
GUEST_DEBS="qemu-system-x86 linux-image-amd64 busybox-static kmod cpio e2fsprogs ndctl daxctl iproute2 ibverbs-providers perftest"

say() { echo "test-pmem: $*"; }
die() { echo "test-pmem: error: $*" >&2; exit 1; }
# cannot REASON: what to do when the guest stage cannot run here at all.
cannot() {
    if $if_possible; then say "skipped, QEMU cannot run here: $*"; exit 0; fi
    die "$*"
}

# --- what the host needs -------------------------------------------------------------------------
mkdir -p "$WORK" || die "cannot create $WORK"
[ "$(uname -m)" = x86_64 ] || cannot "the guest is x86-64 and this machine is $(uname -m)"
scripts/ensure-debs.sh $GUEST_DEBS 2> "$WORK/deps.log" ||
    cannot "$(grep -m 1 -i 'error' "$WORK/deps.log" | sed 's/^error: //') (see $WORK/deps.log)"
kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
[ -n "$kernel" ] || cannot "no kernel in /boot (linux-image-amd64)"
kver=${kernel#/boot/vmlinuz-}
[ -r "$kernel" ] || cannot "$kernel is not readable"
[ -d "/lib/modules/$kver" ] || cannot "no modules for $kver"
qemu-system-x86_64 --version > /dev/null 2>&1 || cannot "qemu-system-x86_64 does not run"

# --- daxlab, static standard library -------------------------------------------------------------
say "building daxlab (release, static Swift standard library)"
$SWIFT build -c release --static-swift-stdlib --scratch-path .build-static --product daxlab \
    > "$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log"; die "the static build failed"; }
daxlab=.build-static/release/daxlab

# --- the initramfs --------------------------------------------------------------------------------
root=$WORK/root
rm -rf "$root" "$WORK"/*.log "$WORK/nvdimm.img"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,modules}

# install_binary SOURCE DESTINATION: the binary and every library ldd names, at the same paths.
install_binary() {
    install -D -m 0755 "$1" "$root$2" || die "cannot copy $1"
    ldd "$1" 2>/dev/null | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }' | while read -r library; do
        [ -e "$root$library" ] || install -D -m 0755 "$(readlink -f "$library")" "$root$library"
    done
}
install_binary "$daxlab" /bin/daxlab
strip "$root/bin/daxlab" 2>/dev/null || true
install_binary "$(command -v busybox)" /bin/busybox
install_binary "$(command -v ndctl)" /usr/bin/ndctl
install_binary "$(command -v daxctl)" /usr/bin/daxctl
install_binary "$(command -v mke2fs)" /sbin/mke2fs
# RDMA: iproute2's `rdma` makes the soft-RoCE link, perftest's ib_write_bw is a client daxlab did
# not write, and libibverbs loads the rxe provider named in /etc/libibverbs.d.
install_binary "$(command -v rdma)" /usr/bin/rdma
install_binary "$(command -v ib_write_bw)" /usr/bin/ib_write_bw
for provider in /usr/lib/x86_64-linux-gnu/libibverbs/librxe-*.so; do
    [ -e "$provider" ] || die "no rxe provider for libibverbs (ibverbs-providers)"
    install_binary "$provider" "$provider"
done
install -D -m 0644 /etc/libibverbs.d/rxe.driver "$root/etc/libibverbs.d/rxe.driver" || die "no /etc/libibverbs.d/rxe.driver"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"
install -m 0755 scripts/pmem-guest/init "$root/init"

# The nvdimm, dax and ext4 modules, and soft-RoCE's (rdma_rxe needs a crc32 crypto module), with
# their dependencies, in load order. ndctl's modprobe.d file hides libnvdimm's path, hence -C /dev/null.
for module in libnvdimm nfit nd_e820 nd_pmem nd_btt dax_pmem device_dax ext4 brd crc32_generic rdma_rxe; do
    modprobe -C /dev/null -S "$kver" --show-depends "$module" 2>/dev/null || die "no module $module for $kver"
done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' > "$WORK/modules.paths"
while read -r path; do
    name=$(basename "$path")
    case $name in
        *.ko) cp "$path" "$root/modules/$name" ;;
        *.ko.xz) xz -dc "$path" > "$root/modules/${name%.xz}"; name=${name%.xz} ;;
        *.ko.zst) zstd -qdc "$path" > "$root/modules/${name%.zst}"; name=${name%.zst} ;;
        *) die "cannot load module file $path" ;;
    esac
    echo "$name" >> "$root/modules/order"
done < "$WORK/modules.paths"

# The file the guests write and read back: 5 MiB of random bytes reaches double-indirect blocks.
head -c $((5 << 20)) /dev/urandom > "$root/payload.bin"

(cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 > "$WORK/initrd.gz" || die "cannot pack the initramfs"
say "initramfs $(du -h "$WORK/initrd.gz" | cut -f1) for kernel $kver ($(wc -l < "$root/modules/order") modules)"

# --- the guests ------------------------------------------------------------------------------------
# boot STAGE QEMU-ARGS...: boots one guest; its console goes to the terminal and $WORK/STAGE.log.
boot() {
    local stage=$1; shift
    local started=$SECONDS
    say "booting the $stage guest (limit ${BOOT_TIMEOUT}s)"
    timeout --kill-after=10 "$BOOT_TIMEOUT" qemu-system-x86_64 \
        -accel tcg,thread=multi -cpu max -smp 2 -display none -no-reboot -monitor none \
        -serial stdio -kernel "$kernel" -initrd "$WORK/initrd.gz" "$@" < /dev/null 2>&1 |
        tr -d '\r' | tee "$WORK/$stage.log" | sed 's/^/  | /'
    local code=${PIPESTATUS[0]}
    say "$stage guest finished in $((SECONDS - started))s (qemu exit $code)"
    [ "$code" = 124 ] || [ "$code" = 137 ] && echo "DAXLAB-HOST $stage TIMEOUT" >> "$WORK/$stage.log"
    return 0
}
append() { echo "console=ttyS0 panic=-1 loglevel=4 daxlab.seconds=$RACE_SECONDS daxlab.stage=$1"; }

nvdimm=(-machine pc,nvdimm=on -m 2G,slots=2,maxmem=8G
    -object "memory-backend-file,id=nv0,share=on,mem-path=$WORK/nvdimm.img,size=1G"
    -device nvdimm,id=nvdimm0,memdev=nv0,label-size=128K)
export PMEM_STAGES=${PMEM_STAGES:-nvdimm reboot memmap}
truncate -s 1G "$WORK/nvdimm.img"
for stage in $PMEM_STAGES; do
    case $stage in
        nvdimm | reboot) boot "$stage" "${nvdimm[@]}" -append "$(append "$stage")" ;;
        memmap) boot memmap -machine pc -m 3G -append "$(append memmap) memmap=512M!1G memmap=512M!2G" ;;
        *) die "unknown stage '$stage' in PMEM_STAGES (nvdimm, reboot, memmap)" ;;
    esac
done

# --- the verdict -----------------------------------------------------------------------------------
scripts/pmem-guest/verdict.sh "$WORK"
