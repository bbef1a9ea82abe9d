#!/usr/bin/env bash
# Cross builds eddyd and eddyctl for ARM gateways with Debian's cross toolchains, and runs the
# engine's and daemon's tests under qemu-user. See packaging/README.md ("ARM").
#
#   scripts/cross.sh setup  ARCH   install the rustup target, cross gcc and qemu-user (root)
#   scripts/cross.sh build  ARCH [PROFILE]
#                                  target/<triple>/PROFILE/{eddyd,eddyctl} (release; dist: small)
#   scripts/cross.sh test   ARCH   the engine's tests and the daemon's file-based tests, under qemu
#   scripts/cross.sh env    ARCH   print the environment the other commands use (to eval)
#   scripts/cross.sh binfmt ARCH   register qemu-user with binfmt_misc, so ARM binaries run (root)
#
# ARCH is arm64 (aarch64-unknown-linux-gnu) or armhf (armv7-unknown-linux-gnueabihf). Under
# qemu-user io_uring is not emulated: the storage tests there exercise the pwrite path (and on
# armhf it is the only one: the io-uring crate has no 32-bit bindings).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/cross.sh setup|build|test|env|binfmt arm64|armhf [release|dist]" >&2; exit 2; }
[ $# -eq 2 ] || [ $# -eq 3 ] || usage
cmd=$1
profile=${3:-release}
case "$2" in
    arm64 | aarch64) triple=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu qemu=aarch64 deb=arm64 ;;
    armhf | armv7) triple=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf qemu=arm deb=armhf ;;
    *) usage ;;
esac
var=$(echo "$triple" | tr 'a-z-' 'A-Z_')
# Where cargo puts the target's binaries (scripts/debian11.sh sets a target directory of its own).
out=${CARGO_TARGET_DIR:-target}/$triple
low=$(echo "$triple" | tr '-' '_')

cross_env() {
    # Rust's linker and test runner for the target (the target's libc is Debian's multiarch one,
    # in /lib/$gnu, as on the device); the cc crate's compiler for its C code (ring,
    # zstd); zlib is the system's, as on x86-64 (Debian's multiarch package, found by pkg-config). librdkafka's own configure reads plain CC/CXX/AR, so those name the cross tools
    # too, and the host's build scripts keep the host compiler through the *_x86_64_* variables.
    cat <<EOF
export CARGO_TARGET_${var}_LINKER=$gnu-gcc
export CARGO_TARGET_${var}_RUNNER=qemu-$qemu
export CC_${low}=$gnu-gcc CXX_${low}=$gnu-g++ AR_${low}=$gnu-ar
export CC=$gnu-gcc CXX=$gnu-g++ AR=$gnu-ar RANLIB=$gnu-ranlib STRIP=$gnu-strip
export CC_x86_64_unknown_linux_gnu=gcc CXX_x86_64_unknown_linux_gnu=g++ AR_x86_64_unknown_linux_gnu=ar
export HOST_CC=gcc HOST_CXX=g++ HOST_AR=ar
export PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_LIBDIR_${low}=/usr/lib/$gnu/pkgconfig
EOF
}

# Child processes the tests start (eddyd itself) are ARM binaries too: the kernel runs them
# through qemu when binfmt_misc knows the format.
register_binfmt() {
    local reg=/proc/sys/fs/binfmt_misc
    [ -e "$reg/register" ] || mount -t binfmt_misc binfmt_misc "$reg" 2>/dev/null || true
    if [ -e "$reg/qemu-$qemu" ]; then
        return 0
    fi
    if [ -w "$reg/register" ] && [ -f "/usr/lib/binfmt.d/qemu-$qemu.conf" ]; then
        cat "/usr/lib/binfmt.d/qemu-$qemu.conf" > "$reg/register"
    fi
    if [ ! -e "$reg/qemu-$qemu" ]; then
        echo "scripts/cross.sh: cannot register qemu-$qemu with binfmt_misc (needs root); tests that start eddyd will fail" >&2
        return 1
    fi
}

case "$cmd" in
    setup)
        rustup target add "$triple"
        dpkg --add-architecture "$deb"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "gcc-$gnu" "g++-$gnu" "binutils-$gnu" \
            "libc6-dev-$deb-cross" "zlib1g-dev:$deb" qemu-user qemu-user-binfmt
        ;;
    env)
        cross_env
        ;;
    binfmt)
        register_binfmt
        ;;
    build)
        eval "$(cross_env)"
        cargo build --profile "$profile" --locked --target "$triple" --bin eddyd --bin eddyctl
        ls -l "$out/$profile/eddyd" "$out/$profile/eddyctl"
        ;;
    test)
        eval "$(cross_env)"
        register_binfmt
        # Tests that read this process's own memory map skip when qemu-user shows its host's.
        export EDDY_TEST_EMULATED=1
        # The engine's whole suite, and the daemon's tests that need no broker (golden replay,
        # durable state across kills, the management API over its Unix socket, which drives the
        # target's eddyctl: built first, as `cargo test -p eddyd` builds only eddyd).
        cargo test --release --locked --target "$triple" -p eddy-engine --no-fail-fast
        cargo build --release --locked --target "$triple" --bin eddyctl
        cargo test --release --locked --target "$triple" -p eddyd --no-fail-fast \
            --bins --test golden --test durable --test api
        # The shared replay cases, against the ARM eddyd those tests built.
        if [ -f ../shared/conformance/run.py ]; then
            python3 ../shared/conformance/run.py --bin "$out/release/eddyd"
            python3 ../shared/conformance/run.py --bin "$out/release/eddyd" --cases ../shared/conformance/joins
        fi
        ;;
    *) usage ;;
esac
