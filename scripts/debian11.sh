#!/usr/bin/env bash
# Builds eddyd and eddyctl inside a Debian 11 (bullseye) root, against its glibc 2.31, so that the
# packages install and run on Debian 11 and on every distribution newer than it. A build on this
# machine links against its own, newer glibc and needs that glibc (2.35) on the gateway. See
# packaging/README.md ("glibc floor").
#
#   scripts/debian11.sh setup [ARCH]       debootstrap the root into target/debian11-root (root;
#                                          ARCH arm64 or armhf also installs Debian 11's cross gcc)
#   scripts/debian11.sh build [ARCH] [PROFILE]
#                                          target/debian11/[<triple>/]PROFILE/{eddyd,eddyctl}
#                                          (release by default; dist: the small binaries)
#   scripts/debian11.sh check [ARCH]       run those binaries inside the Debian 11 root: the shared
#                                          replay cases (arm64/armhf under qemu-user)
#   scripts/debian11.sh test ARCH          scripts/cross.sh test ARCH inside the root: the engine's and
#                                          daemon's tests under qemu-user, against glibc 2.31
#   scripts/debian11.sh shell              a shell in the root, with the workspace at /src
#
# ARCH is host (the default: this machine's own), arm64 or armhf.
#
# The root borrows this machine's Rust toolchain (rustup's builds need only glibc 2.17) and its
# cargo download cache: both are bind-mounted in a private mount namespace, so nothing stays
# mounted when a command ends. The build uses target/debian11/ as its target directory, apart
# from this machine's builds (cargo would otherwise mix artifacts of two glibcs). Then
# `scripts/package.sh --debian11 [--target ARCH]` packages the binaries built here.
#
# Debian's mirror is the one this machine's apt uses, or DEBIAN_MIRROR when set.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: scripts/debian11.sh setup|build|check|test|shell [host|arm64|armhf] [release|dist]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 3 ] || usage
cmd=$1
arch=${2:-host}
profile=${3:-release}
case "$arch" in
    host) bin=target/debian11/$profile ;;
    arm64) bin=target/debian11/aarch64-unknown-linux-gnu/$profile ;;
    armhf) bin=target/debian11/armv7-unknown-linux-gnueabihf/$profile ;;
    *) usage ;;
esac
root=$PWD/target/debian11-root
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
# What building the workspace needs (librdkafka's configure wants perl and python3; the
# conformance runner python3 too), and systemd, procps (the unit reloads with /bin/kill) and
# curl, so that the packages can be booted there: tests/packaging/boot.sh --root target/debian11-root.
packages=build-essential,pkg-config,zlib1g-dev,perl,python3,ca-certificates,git,systemd,procps,curl

mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    # The first Debian archive in apt's sources (deb822 or one-line format), not its security one.
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs: *//p' | tr ' ' '\n' |
        grep -v security | head -1 || true)
    [ -n "$uri" ] || uri=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null |
        grep -v security | head -1 || true)
    [ -n "$uri" ] || { echo "scripts/debian11.sh: no Debian mirror in apt's sources; set DEBIAN_MIRROR" >&2; exit 1; }
    echo "$uri"
}

# Runs "$@" as a shell command inside the root, with the workspace, the toolchain and the cargo
# cache mounted, in a mount namespace of its own.
in_root() {
    [ -x "$root/usr/bin/gcc" ] || { echo "scripts/debian11.sh: no Debian 11 root; run 'scripts/debian11.sh setup' first" >&2; exit 1; }
    local shared=""
    [ -d ../shared ] && shared=$(cd ../shared && pwd)
    unshare --mount --propagation private -- bash -euo pipefail -c '
        root=$1 src=$2 rustup_home=$3 cargo_home=$4 shared=$5
        shift 5
        mkdir -p "$root/src" "$root/shared" "$root/opt/rustup" "$root/opt/cargo"
        mount --bind "$src" "$root/src"
        mount --bind "$rustup_home" "$root/opt/rustup"
        mount --bind "$cargo_home" "$root/opt/cargo"
        [ -z "$shared" ] || mount --bind "$shared" "$root/shared"
        mount -t proc proc "$root/proc"
        mount --bind /dev "$root/dev"
        # The root trusts the certificate authorities this machine trusts (a proxy of its own).
        mount --bind /etc/ssl/certs "$root/etc/ssl/certs"
        cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
        proxies=()
        for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
            [ -z "${!v:-}" ] || proxies+=("$v=${!v}")
        done
        exec chroot "$root" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" "${proxies[@]}" \
            PATH=/opt/cargo/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
            RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo CARGO_TARGET_DIR=/src/target/debian11 \
            bash -euo pipefail -c "cd /src && $*"
    ' in_root "$root" "$PWD" "$rustup_home" "$cargo_home" "$shared" "$@"
}

case "$cmd" in
    setup)
        [ "$(id -u)" = 0 ] || { echo "scripts/debian11.sh: setup needs root (debootstrap, chroot)" >&2; exit 1; }
        command -v debootstrap > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
        if [ ! -x "$root/usr/bin/gcc" ]; then
            rm -rf "$root"
            debootstrap --variant=minbase --include="$packages" bullseye "$root" "$(mirror)"
        fi
        # A root made by an older version of this script gets what it lacks.
        in_root "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${packages//,/ } > /dev/null"
        if [ "$arch" != host ]; then
            # Debian 11's cross gcc and the target's glibc 2.31, as scripts/cross.sh installs them.
            in_root "scripts/cross.sh setup $arch"
        fi
        in_root 'ldd --version | head -1'
        ;;
    build)
        if [ "$arch" = host ]; then
            in_root "cargo build --profile $profile --locked --bin eddyd --bin eddyctl"
        else
            in_root "scripts/cross.sh build $arch $profile"
        fi
        # scripts/package.sh --debian11 reads their glibc floor into the packages' depends.
        ls -l "$bin/eddyd" "$bin/eddyctl"
        ;;
    check)
        run=""
        [ "$arch" = arm64 ] && run="qemu-aarch64 "
        [ "$arch" = armhf ] && run="qemu-arm "
        [ -x "$bin/eddyd" ] || { echo "scripts/debian11.sh: $bin/eddyd is not built" >&2; exit 1; }
        # The conformance runner starts eddyd itself: an ARM one through binfmt_misc.
        [ "$arch" = host ] || scripts/cross.sh binfmt "$arch"
        in_root "${run}$bin/eddyd --version && ${run}$bin/eddyctl --version &&
            if [ -f /shared/conformance/run.py ]; then
                python3 /shared/conformance/run.py --bin $bin/eddyd
                python3 /shared/conformance/run.py --bin $bin/eddyd --cases /shared/conformance/joins
            fi"
        ;;
    test)
        [ "$arch" != host ] || usage
        scripts/cross.sh binfmt "$arch"
        in_root "scripts/cross.sh test $arch"
        ;;
    shell)
        in_root 'exec bash -i'
        ;;
    *) usage ;;
esac
