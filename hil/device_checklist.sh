#!/usr/bin/env bash
# Hardware-in-the-loop checklist for a flashed Jetson (docs/image.md §3, §5): run ON THE DEVICE as
# root after flashing, then after each power cut. Checks what the VM tier cannot prove: NVIDIA's
# partition layout, the Tegra watchdog, the JetPack torch, and restore after a real power loss
# (relay or by hand: pull the barrel plug / USB-C while the node persists).
#
#   sudo bash hil/device_checklist.sh check          # after flashing: layout, units, first boot, serving
#   sudo bash hil/device_checklist.sh before-cut     # record the acknowledged generation, then cut power
#   sudo bash hil/device_checklist.sh after-cut      # after power-on: newest acknowledged or newer, verified
#
# Prints one line per check: PASS/FAIL/INFO <what>; exits 1 if any check failed. Keeps its record
# in /var/lib/appliance-hil/ (acknowledged generation, results), so the steps can span power cuts.
set -uo pipefail
STATE=/var/lib/appliance-hil
APPLIANCE=/opt/appliance/venv/bin/appliance
CONFIG=/etc/appliance/node.json
FAILED=0
mkdir -p "$STATE"
pass() { echo "PASS $*" | tee -a "$STATE/results.txt"; }
fail() { echo "FAIL $*" | tee -a "$STATE/results.txt"; FAILED=1; }
info() { echo "INFO $*" | tee -a "$STATE/results.txt"; }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what"; fi; }

served_generation() {
    "$APPLIANCE" boot-status --config "$CONFIG" --json 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); h=d.get("handoff") or {}; print(h.get("generation", ""))'
}
acked_generation() {
    "$APPLIANCE" events --config "$CONFIG" --event persist.committed --tail 1 --json 2>/dev/null |
        python3 -c 'import json,sys; e=json.load(sys.stdin)["events"]; print(e[-1]["fields"]["generation"] if e else "")'
}
wait_serving() {
    local deadline=$((SECONDS + ${1:-900}))
    while [ $SECONDS -lt $deadline ]; do
        curl -fsS http://127.0.0.1:8470/ready >/dev/null 2>&1 && return 0
        sleep 2
    done
    return 1
}

case "${1:-check}" in
check)
    echo "== $(date -u +%FT%TZ) $(tr -d '\0' </proc/device-tree/model 2>/dev/null) =="
    check "CKPT_A present by partlabel" test -e /dev/disk/by-partlabel/CKPT_A
    check "CKPT_B present by partlabel" test -e /dev/disk/by-partlabel/CKPT_B
    app=$(readlink -f /dev/disk/by-partlabel/APP 2>/dev/null)
    case "$app" in *p1) pass "APP is p1 ($app)" ;; *) fail "APP is p1 (found '$app')" ;; esac
    check "CKPT_A is ext4" sh -c 'blkid -p -o value -s TYPE /dev/disk/by-partlabel/CKPT_A | grep -qx ext4'
    check "CKPT_B is ext4" sh -c 'blkid -p -o value -s TYPE /dev/disk/by-partlabel/CKPT_B | grep -qx ext4'
    check "slot A mounted" mountpoint -q /var/lib/appliance/A
    check "slot B mounted" mountpoint -q /var/lib/appliance/B
    check "first boot done" test -f /var/lib/appliance-provision/done.json
    check "provisioning file shredded" test ! -e /etc/appliance/provision.json
    check "device key is 0400" sh -c '[ "$(stat -c %a /etc/appliance/device.key)" = 400 ]'
    check "no failed units" sh -c '[ -z "$(systemctl --failed --no-legend --plain)" ]'
    check "hardware watchdog owned by systemd" sh -c 'systemctl show -p RuntimeWatchdogUSec --value | grep -vqx 0'
    info "watchdog: $(cat /sys/class/watchdog/watchdog0/identity 2>/dev/null) timeout $(cat /sys/class/watchdog/watchdog0/timeout 2>/dev/null)s"
    check "JetPack torch sees the GPU" /opt/appliance/venv/bin/python -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'
    check "service serving" wait_serving 900
    check "store verifies (deep)" "$APPLIANCE" verify /var/lib/appliance --deep
    check "journald has appliance MESSAGE_IDs" sh -c 'journalctl -o json MESSAGE_ID=443baed6af794a5a92b953b482a774b0 -n 1 | grep -q APPLIANCE_GENERATION'
    info "served generation $(served_generation)"
    ;;
before-cut)
    wait_serving 900 || fail "service serving before the cut"
    gen=$(acked_generation)
    echo "${gen:-0}" > "$STATE/acked"
    sync
    info "acknowledged generation ${gen:-none}: now cut the power (relay or plug) while it persists"
    ;;
after-cut)
    acked=$(cat "$STATE/acked" 2>/dev/null || echo 0)
    if wait_serving 900; then pass "serving after power-on"; else fail "serving after power-on"; fi
    gen=$(served_generation)
    if [ -n "$gen" ] && [ "$gen" -ge "$acked" ]; then pass "serves generation $gen >= acknowledged $acked"
    else fail "serves generation '$gen', acknowledged $acked"; fi
    check "store verifies (deep) after the cut" "$APPLIANCE" verify /var/lib/appliance --deep
    check "no failed units after the cut" sh -c '[ -z "$(systemctl --failed --no-legend --plain)" ]'
    ;;
*) echo "usage: $0 check|before-cut|after-cut" >&2; exit 2 ;;
esac
exit $FAILED
