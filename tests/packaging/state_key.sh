#!/usr/bin/env bash
# packaging/make-state-key without root or a booted systemd: the commands it calls are stubs on a
# PATH of their own, its paths point into a scratch directory. Checks each way it can go: an
# encrypted credential where systemd-creds exists; under an older systemd a root-only key file
# and the drop-in that loads it; an existing key never replaced, also when systemd-creds comes
# later; nothing done where a key exists. (The packages run it for real under systemd 252 and
# 247 in tests/packaging/boot.sh.) Ends with "N passed, N failed".
set -euo pipefail
script=$(cd "$(dirname "$0")/../.." && pwd)/packaging/make-state-key
work=$(mktemp -d /tmp/eddy-state-key.XXXXXX)
trap 'rm -rf "$work"' EXIT
. "$(dirname "$0")/check.sh"

# The tools the script needs, and stubs: eddyd keygen prints a new key each time; systemd-creds
# marks what it encrypts.
mkdir -p "$work/bin" "$work/bin-creds"
for tool in sh mkdir mv rm chmod cat dirname; do
    ln -s "$(command -v "$tool")" "$work/bin/$tool"
done
printf '#!/bin/sh\n[ "$1" = keygen ] && head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"\n' > "$work/bin/eddyd"
printf '#!/bin/sh\nexit 0\n' > "$work/bin/systemctl"
printf '#!/bin/sh\n{ echo encrypted; cat; } > "$4"\n' > "$work/bin-creds/systemd-creds"
chmod +x "$work/bin/eddyd" "$work/bin/systemctl" "$work/bin-creds/systemd-creds"
ln -s "$(command -v head)" "$work/bin/head"
ln -s "$(command -v od)" "$work/bin/od"
ln -s "$(command -v tr)" "$work/bin/tr"

# make-state-key in directory $1, with systemd-creds when $2 is "creds".
run() {
    local path=$work/bin
    [ "${2:-}" = creds ] && path=$work/bin-creds:$path
    env -i PATH="$path" EDDYD="$work/bin/eddyd" EDDY_DROPIN_DIR="$1/eddyd.service.d" \
        "$work/bin/sh" "$script" "$1/eddy/state-key.cred" 2>/dev/null
}
mode() { stat -c %a "$1"; }

new=$work/systemd-creds
run "$new" creds
check "systemd-creds: the credential is made, root-only" test "$(mode "$new/eddy/state-key.cred")" = 600
check "systemd-creds: it holds what systemd-creds encrypted" grep -q '^encrypted' "$new/eddy/state-key.cred"
check "systemd-creds: no key file, no drop-in" test ! -e "$new/eddy/state-key" -a ! -e "$new/eddyd.service.d"
sum=$(sha256sum < "$new/eddy/state-key.cred")
run "$new" creds
check "systemd-creds: run again, the credential is kept" test "$(sha256sum < "$new/eddy/state-key.cred")" = "$sum"

old=$work/systemd-247
run "$old"
check "no systemd-creds: a key file, root-only" test "$(mode "$old/eddy/state-key")" = 600
check "no systemd-creds: the key is eddyd keygen's" grep -q -x '[0-9a-f]\{32\}' "$old/eddy/state-key"
check "no systemd-creds: no credential file" test ! -e "$old/eddy/state-key.cred"
check "no systemd-creds: the drop-in loads the key file" \
    grep -q -x "LoadCredential=eddy-state-key:$old/eddy/state-key" "$old/eddyd.service.d/state-key.conf"
sum=$(sha256sum < "$old/eddy/state-key")
rm "$old/eddyd.service.d/state-key.conf"
run "$old"
check "run again: the key is kept" test "$(sha256sum < "$old/eddy/state-key")" = "$sum"
check "run again: a lost drop-in is written again" test -f "$old/eddyd.service.d/state-key.conf"
run "$old" creds
check "systemd-creds later: the key file stays the key" test "$(sha256sum < "$old/eddy/state-key")" = "$sum"
check "systemd-creds later: no second key made" test ! -e "$old/eddy/state-key.cred"

none=$work/no-systemd
rm "$work/bin/systemctl"
run "$none"
check "no systemd at all: no key made (eddyd.toml's key_file is the way)" test ! -e "$none/eddy/state-key"

summary
