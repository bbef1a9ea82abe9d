#!/usr/bin/env python3
"""Writes yocto/meta-eddy/recipes-eddy/eddy/eddy-crates.inc from Cargo.lock: every crate from the
crates.io registry as a `crate://` SRC_URI entry with its sha256 checksum, in the layout OE-Core's
cargo-update-recipe-crates class writes (so `bitbake -c update_crates eddy` agrees with it).

    scripts/yocto-crates.py          rewrite the file
    scripts/yocto-crates.py --check  exit 1 (and say what differs) if it does not match Cargo.lock
"""
import pathlib
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOCK = ROOT / "Cargo.lock"
INC = ROOT / "yocto/meta-eddy/recipes-eddy/eddy/eddy-crates.inc"
REGISTRY = "registry+https://github.com/rust-lang/crates.io-index"


def render(lock: dict) -> str:
    crates = [p for p in lock["package"] if p.get("source") == REGISTRY]
    others = [p["name"] for p in lock["package"] if p.get("source") not in (None, REGISTRY)]
    if others:
        sys.exit(f"yocto-crates: crates from outside crates.io need fetcher entries of their own: {others}")
    missing = [p["name"] for p in crates if "checksum" not in p]
    if missing:
        sys.exit(f"yocto-crates: Cargo.lock has no checksum for {missing}")
    lines = [
        "# Generated from Cargo.lock by scripts/yocto-crates.py (as `bitbake -c update_crates eddy` would).",
        "",
        "# from Cargo.lock",
        "# The layout OE-Core's update_crates writes.",
        "# nooelint: oelint.vars.inconspaces,oelint.vars.notneededspace",
        'SRC_URI += " \\',
    ]
    for p in crates:
        lines.append(f"    crate://crates.io/{p['name']}/{p['version']};name={p['name']}-{p['version']} \\")
    lines.append('"')
    lines.append("")
    for p in crates:
        lines.append(f'SRC_URI[{p["name"]}-{p["version"]}.sha256sum] = "{p["checksum"]}"')
    return "\n".join(lines) + "\n"


def main() -> int:
    want = render(tomllib.loads(LOCK.read_text()))
    if sys.argv[1:] == ["--check"]:
        have = INC.read_text() if INC.exists() else ""
        if have != want:
            gone = sorted(set(have.splitlines()) - set(want.splitlines()))
            new = sorted(set(want.splitlines()) - set(have.splitlines()))
            print(f"{INC.relative_to(ROOT)} does not match Cargo.lock; run scripts/yocto-crates.py", file=sys.stderr)
            for line in gone[:10]:
                print(f"  - {line}", file=sys.stderr)
            for line in new[:10]:
                print(f"  + {line}", file=sys.stderr)
            return 1
        print(f"{INC.relative_to(ROOT)}: matches Cargo.lock ({want.count('crate://')} crates)")
        return 0
    INC.write_text(want)
    print(f"wrote {INC.relative_to(ROOT)} ({want.count('crate://')} crates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
