#!/usr/bin/env bash
# The Yocto layer, checked without bitbake: the crates file matches Cargo.lock exactly,
# oelint-adv finds nothing (info aside), and BitBake's own parser parses the layer and the recipe
# (tests/yocto/parse_recipe.py). The linters go into the test suite's venv under target/.
set -euo pipefail
cd "$(dirname "$0")/../.."

python3 scripts/yocto-crates.py --check

venv=target/pyenv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c 'import oelint_adv, bb' 2>/dev/null; then
    "$venv/bin/pip" install -q "oelint-adv==9.11.2" "bitbake-setup==2.19.0"
fi

# HOMEPAGE: the project has no public page yet (yocto/meta-eddy/README.md).
(cd yocto/meta-eddy && "../../$venv/bin/oelint-adv" --quiet --hide info \
    --suppress oelint.var.mandatoryvar.HOMEPAGE recipes-eddy/eddy/eddy_git.bb)
echo "oelint-adv: clean"

"$venv/bin/python" tests/yocto/parse_recipe.py
