#!/usr/bin/env bash
# The .deb under a real systemd: boots a container (systemd-nspawn -b) over an overlay of this
# machine's root, where a unit runs in_container.sh — install, READY, /readyz, a pipeline picked
# up by `systemctl reload`, a restart that recovers durable state, the watchdog restarting a hung
# eddyd, purge — and powers the container off. Needs root and systemd-nspawn; the host's systemd
# need not be running (PID 1 here is not systemd).
#
#   tests/packaging/boot.sh [--root DIR] target/packages/eddy_*.deb [target/packages/eddy-hub_*.deb] [target/packages/eddy-*.rpm]
#
# --root boots an overlay of DIR instead of this machine's root: another distribution's root
# with systemd and curl, e.g. the Debian 11 root of scripts/debian11.sh (systemd 247).
#
# With the eddy-hub package too, it is installed after eddy's checks and started under its unit
# with a one-machine store and its TLS key as a credential. With the .rpm, it is installed with
# rpm once the .deb is purged, and its scriptlets are checked under the same systemd.
#
# Exit 0: every check passed; 1: a check failed or hung; 77: this machine cannot boot such a
# container (no overlayfs, no namespaces, systemd not reaching its units), with the reason.
set -euo pipefail
deb="" hub_deb="" rpm_pkg="" lower=/
if [ "${1:-}" = --root ]; then
    [ $# -ge 2 ] || { echo "tests/packaging/boot.sh: --root needs a directory" >&2; exit 2; }
    lower=$(realpath "$2")
    shift 2
fi
for f in "$@"; do
    case "$f" in
        *.rpm) rpm_pkg=$(realpath "$f") ;;
        *.deb) if [ -z "$deb" ]; then deb=$(realpath "$f"); else hub_deb=$(realpath "$f"); fi ;;
        *) echo "tests/packaging/boot.sh: $f is neither a .deb nor an .rpm" >&2; exit 2 ;;
    esac
done
[ -n "$deb" ] || { echo "tests/packaging/boot.sh: give eddy's .deb" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)

work=$(mktemp -d /tmp/eddy-boot.XXXXXX)
root=$work/root
mkdir -p "$work/upper" "$work/work" "$root" "$work/results" "$work/pkg"
cleanup() {
    umount "$root" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cannot() {
    echo "tests/packaging/boot.sh: skipped: $1" >&2
    exit 77
}
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$work/upper,workdir=$work/work" "$root" ||
    cannot "cannot mount an overlay of $lower (overlayfs, root and a mount namespace are needed)"
systemd-nspawn -q -D "$root" --register=no --keep-unit --private-network /bin/true >/dev/null 2>&1 ||
    cannot "systemd-nspawn cannot start a container on this machine"

# The container's own identity, no first-boot wizard, and the checks as a unit of its boot.
rm -f "$root/etc/machine-id"
systemd-machine-id-setup --root="$root" >/dev/null
ln -sf /dev/null "$root/etc/systemd/system/systemd-firstboot.service"
rm -rf "$root/etc/eddy" "$root/var/lib/eddy" "$root/var/lib/private/eddy"
# A build image's policy-rc.d (exit 101) forbids starting services from maintainer scripts; a
# gateway has none.
rm -f "$root/usr/sbin/policy-rc.d"
cp "$deb" ${hub_deb:+"$hub_deb"} ${rpm_pkg:+"$rpm_pkg"} "$work/pkg/"
cp "$here/in_container.sh" "$here/check.sh" "$work/results/"
cat > "$root/etc/systemd/system/eddy-package-check.service" <<UNIT
[Unit]
Description=Eddy package checks (tests/packaging/in_container.sh)
After=basic.target

[Service]
Type=simple
ExecStart=/bin/bash /results/in_container.sh /pkg/$(basename "$deb") ${hub_deb:+/pkg/$(basename "$hub_deb")} ${rpm_pkg:+/pkg/$(basename "$rpm_pkg")}
UNIT
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf ../eddy-package-check.service "$root/etc/systemd/system/multi-user.target.wants/"

status=0
timeout 900 systemd-nspawn -q -D "$root" -b -M eddy-boot --register=no --keep-unit --private-network \
    --bind="$work/results:/results" --bind-ro="$work/pkg:/pkg" \
    > "$work/results/console" 2>&1 || status=$?
cat "$work/results/log" 2>/dev/null || true
if [ ! -e "$work/results/log" ]; then
    # Our unit never ran: the container's systemd did not get that far (nothing of ours is
    # installed before it runs).
    tail -20 "$work/results/console" >&2
    cannot "the container's systemd did not start its units (nspawn exit $status)"
fi
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$work/results/log" 2>/dev/null | tail -1 || true)
if [ -z "$summary" ]; then
    echo "tests/packaging/boot.sh: the checks did not finish (nspawn exit $status); console:" >&2
    tail -40 "$work/results/console" >&2
    exit 1
fi
case "$summary" in
    *" 0 failed") ;;
    *) exit 1 ;;
esac
