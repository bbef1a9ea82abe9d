# Stand-in for OE-Core base.bbclass (tests/yocto/parse_recipe.py).
