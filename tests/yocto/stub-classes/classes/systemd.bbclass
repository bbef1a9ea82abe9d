# Stand-in for OE-Core systemd.bbclass (tests/yocto/parse_recipe.py).
