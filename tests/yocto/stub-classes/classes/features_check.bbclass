# Stand-in for OE-Core features_check.bbclass (tests/yocto/parse_recipe.py).
