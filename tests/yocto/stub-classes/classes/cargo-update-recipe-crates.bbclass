# Stand-in for OE-Core cargo-update-recipe-crates.bbclass (tests/yocto/parse_recipe.py).
