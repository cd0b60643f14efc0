#!/usr/bin/env bash
# Judges the consoles of the guests that scripts/test-pmem.sh booted: every expected check must
# have passed, nothing may have failed, and each guest must have reached its end marker in time.
# The guest's line protocol is described at the top of scripts/pmem-guest/init.
#
# Usage: verdict.sh DIR          judge DIR/{nvdimm,reboot,memmap}.log (the stages in $PMEM_STAGES,
#                                 default all three); exit 0 pass, 1 fail
#        verdict.sh --expected STAGE [KERNEL]   print the checks STAGE must pass on guest kernel
#                                 KERNEL (default 6.1, Debian 12's), one per line
set -uo pipefail

policies="none fail wait sequester deferred lease-break mainline odp"
# mainline refuses long-term pins: no devdax-longterm race under it (*-mainline-refused checks
# that); odp's devices never pin: no kernel-device race under it.
races() {
    local policy
    for policy in $policies; do
        case $1-$policy in
            devdax-longterm-mainline | devdax-rdma-mainline | *-longterm-odp | *-direct-odp | *-rdma-odp) continue ;;
        esac
        echo "race-$1-$policy"
    done
}
trip() { echo "$1-mkfs $1-write $1-read-back $1-fsck"; }
devices="devices-fsdax devices-devdax devices-pmem-path devices-dax-path"
info="info-fsdax-medium info-fsdax-is-pmem info-fsdax-map-sync info-fsdax-vm-sync-flag"
info="$info info-devdax-medium info-devdax-is-pmem"
# daxlab's windows, faulted by the kernel and the CPU (daxlab mmap-check), on both targets.
windows="mmap-check-fsdax mmap-check-devdax"
# The kernel's own pins and writes: short-term (O_DIRECT) races on both targets; long-term pins
# refused on fs-dax, and on device-dax before 6.5 (io_uring registered no file-backed memory but
# shmem and hugetlbfs until then), raced on device-dax from 6.5.
kernel_checks() {
    local major=${1%%.*} minor=${1#*.} longterm
    minor=${minor%%.*}
    if [ "$major" -gt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -ge 5 ]; }; then longterm=$(races devdax-longterm)
    else longterm=devdax-longterm-refused; fi
    echo disk-mkfs disk-mount $longterm $(races devdax-direct) fsdax-longterm-refused fsdax-mainline-refused \
        devdax-mainline-refused $(races fsdax-direct)
}

# RDMA devices over soft-RoCE: races on device-dax, refused on fs-dax (ibv_reg_mr) and by mainline,
# the device's on-demand-paging answer, and perftest's ib_write_bw on the device-dax device.
rdma="rdma-link rdma-uverbs rdma-listed rdma-check-devdax $(races devdax-rdma) fsdax-rdma-refused devdax-rdma-mainline-refused rdma-odp-refused"
rdma="$rdma ib-write-bw-devdax"

# expected STAGE [KERNEL]
expected() {
    local kernel
    kernel=$(kernel_checks "${2:-6.1}")
    case $1 in
        nvdimm) echo labels-initialised create-fsdax create-devdax $devices mkfs-ext4 mount-dax mount-option-dax \
            $info $(trip fsdax) $(races fsdax) $(races devdax) $kernel $rdma $windows $(trip devdax) fsdax-still-intact ;;
        reboot) echo namespaces-back $devices mount-dax mount-option-dax \
            fsdax-survived-fsck fsdax-survived-read-back devdax-survived-fsck devdax-survived-read-back ;;
        memmap) echo reconfigure-fsdax reconfigure-devdax $devices mkfs-ext4 mount-dax mount-option-dax \
            $info $(trip fsdax) $(trip devdax) $(races fsdax) $(races devdax) $kernel $rdma bench-rdma $windows \
            reconfigure-devdax-2m mmap-check-devdax-2m ;;
        *) echo "verdict: unknown stage '$1'" >&2; return 2 ;;
    esac
}

case "${1:-}" in
    --expected) expected "${2:-}" "${3:-}" | tr ' ' '\n'; exit ;;
    "" | -*) echo "usage: $0 DIR | --expected STAGE" >&2; exit 2 ;;
esac
dir=$1
problems=()
checks=0
stages=${PMEM_STAGES:-nvdimm reboot memmap}
for stage in $stages; do
    log=$dir/$stage.log
    if [ ! -s "$log" ]; then problems+=("$stage: no console log ($log)"); continue; fi
    # The guest's kernel, from its first line ("daxlab-guest[STAGE]: kernel 6.1.0-56-amd64, ...").
    kernel=$(sed -n "s/^daxlab-guest\[$stage\]: kernel \([0-9][0-9.]*\).*/\1/p" "$log" | head -n 1)
    for name in $(expected "$stage" "${kernel:-6.1}"); do
        if grep -q "^DAXLAB-CHECK $stage $name PASS" "$log"; then
            checks=$((checks + 1))
        else
            problems+=("$stage: $name did not pass")
        fi
    done
    while read -r line; do problems+=("failed: ${line#DAXLAB-CHECK }"); done < <(grep "^DAXLAB-CHECK $stage .* FAIL" "$log")
    grep -q "^DAXLAB-HOST $stage TIMEOUT" "$log" && problems+=("$stage: timed out")
    grep -q "^DAXLAB-GUEST-END stage=$stage failures=0\$" "$log" ||
        problems+=("$stage: no clean end marker (DAXLAB-GUEST-END stage=$stage failures=0)")
done

echo "test-pmem: race verdicts"
cat "$dir"/{nvdimm,memmap}.log 2>/dev/null | grep "^DAXLAB-RACE" | sed 's/^DAXLAB-RACE /  /'
if [ ${#problems[@]} -ne 0 ]; then
    printf '  %s\n' "${problems[@]}"
    echo "test-pmem: FAIL: ${#problems[@]} problem(s); the consoles are in $dir/{nvdimm,reboot,memmap}.log" >&2
    exit 1
fi
echo "test-pmem: PASS: $checks checks in the boots $(echo $stages | sed 's/ /, /g') (fs-dax and device-dax on an NVDIMM" \
    "and on memmap= pmem; simulated, kernel and RDMA devices; the data survived the reboot)"
