# Stand-in for OE-Core cargo.bbclass (tests/yocto/parse_recipe.py): the variables the recipe extends.
CARGO_BUILD_FLAGS = "-v --frozen --target ${RUST_HOST_SYS} --release"
CARGO_TARGET_SUBDIR = "${RUST_HOST_SYS}/release"
