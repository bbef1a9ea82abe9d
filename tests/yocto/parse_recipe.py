#!/usr/bin/env python3
"""Parses yocto/meta-eddy with BitBake's own parser (the `bb` library that `pip install
bitbake-setup` ships) and checks what the recipe sets: the layer's compatibility, every crate of
Cargo.lock in SRC_URI with its checksum, the source from git, the install and systemd settings,
PACKAGECONFIG. OE-Core's classes are stood in for by tests/yocto/stub-classes (no checkout here).

    python parse_recipe.py
"""
import hashlib
import pathlib
import sys
import tomllib
import types

# bb.siggen imports hashserv (hash equivalence), which the wheel does not ship; parsing never
# calls it.
for name in ("hashserv", "hashserv.client"):
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules["hashserv"].client = sys.modules["hashserv.client"]

import bb.data  # noqa: E402
import bb.parse  # noqa: E402
import bb.siggen  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAYER = ROOT / "yocto/meta-eddy"
STUBS = pathlib.Path(__file__).resolve().parent / "stub-classes"
RECIPE = LAYER / "recipes-eddy/eddy/eddy_git.bb"

failures = []


def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(name)


d = bb.data.init()
d.setVar("BBPATH", f"{STUBS}:{LAYER}")
d.setVar("TOPDIR", str(LAYER))
# What OE-Core's bitbake.conf would define for the variables the recipe uses.
for var, value in {
    "PN": "${@bb.parse.vars_from_file(d.getVar('FILE', False), d)[0] or 'defaultpkgname'}",
    "BPN": "${PN}",
    "UNPACKDIR": "/build/sources",
    "COMMON_LICENSE_DIR": "/oe-core/meta/files/common-licenses",
    "RUST_HOST_SYS": "aarch64-poky-linux",
    "bindir": "/usr/bin",
    "sysconfdir": "/etc",
    "nonarch_libdir": "/usr/lib",
    "systemd_system_unitdir": "/usr/lib/systemd/system",
    "PACKAGECONFIG_CONFARGS": "",
}.items():
    d.setVar(var, value)

# Set by BitBake's cooker while it parses recipes (it picks classes-recipe/ over classes/).
d.setVar("__bbclasstype", "recipe")
d.setVar("LAYERDIR", str(LAYER))
bb.parse.handle(str(LAYER / "conf/layer.conf"), d, True)
d.delVar("LAYERDIR")
check("layer.conf: compatible with wrynose", "wrynose" in (d.getVar("LAYERSERIES_COMPAT_eddy") or ""))
check("layer.conf: the recipe is in BBFILES", "recipes-*/*/*.bb" in (d.getVar("BBFILES") or ""))
check("layer.conf: EDDY_REPO_DIR is the repository", d.getVar("EDDY_REPO_DIR") == str(ROOT), d.getVar("EDDY_REPO_DIR"))

# The cooker sets the signature generator before parsing recipes; the basic one computes nothing.
bb.parse.siggen = bb.siggen.SignatureGenerator(d)
r = bb.parse.handle(str(RECIPE), d)[""]
src = (r.getVar("SRC_URI") or "").split()
lock = tomllib.loads((ROOT / "Cargo.lock").read_text())
crates = {f"{p['name']}-{p['version']}": p["checksum"] for p in lock["package"] if "checksum" in p}
entries = {u.split(";name=")[1] for u in src if u.startswith("crate://")}
check("SRC_URI has every crate of Cargo.lock", entries == set(crates), f"{len(entries)} of {len(crates)}")
bad = [n for n, sum_ in crates.items() if r.getVarFlag("SRC_URI", f"{n}.sha256sum") != sum_]
check("each crate's sha256sum is Cargo.lock's", not bad, ", ".join(bad[:5]))
check("the source is the repository's git", src[0].startswith(f"git://{ROOT};protocol=file;branch=main"), src[0])
check("PN is eddy", r.getVar("PN") == "eddy", r.getVar("PN"))
check("LICENSE", r.getVar("LICENSE") == "Apache-2.0")
lic = r.getVar("LIC_FILES_CHKSUM") or ""
md5 = hashlib.md5((ROOT / "LICENSE").read_bytes()).hexdigest()
check("LIC_FILES_CHKSUM is the repository's LICENSE with its md5", lic == f"file://LICENSE;md5={md5}", lic)
check("inherits systemd and enables eddyd.service", r.getVar("SYSTEMD_SERVICE:eddy") == "eddyd.service")
check("builds eddyd and eddyctl only", "--bin eddyd --bin eddyctl" in (r.getVar("CARGO_BUILD_FLAGS") or ""))
check("PACKAGECONFIG[kafka-tls] selects the feature", "eddyd/kafka-tls" in (r.getVarFlag("PACKAGECONFIG", "kafka-tls") or ""))
install = r.getVar("do_install") or ""
for path in ("systemd/eddyd.service", "packaging/eddyd.toml", "packaging/make-state-key"):
    check(f"do_install takes {path} from the repository", f"${{S}}/{path}" in install or f"/build/sources/git/{path}" in install)
    check(f"{path} exists in the repository", (ROOT / path).exists())
check("the config is a conffile", r.getVar("CONFFILES:eddy") == "/etc/eddy/eddyd.toml")
check("the state key is made on the device", "make-state-key" in (r.getVar("pkg_postinst_ontarget:eddy") or ""))

print(f"{len(failures) == 0 and 'recipe parses' or 'recipe checks failed'}: {RECIPE.relative_to(ROOT)}")
sys.exit(1 if failures else 0)
