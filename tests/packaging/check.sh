# Sourced by the package tests (in_container.sh, state_key.sh): `check NAME COMMAND...` runs the
# command and prints "PASS NAME" or "FAIL NAME", counting both; `summary` prints the
# "N passed, N failed" line the callers end with and fails if any check did.
passed=0
failed=0

check() {
    local name=$1
    shift
    if "$@"; then
        echo "PASS $name"
        passed=$((passed + 1))
    else
        echo "FAIL $name"
        failed=$((failed + 1))
    fi
}

summary() {
    echo "$passed passed, $failed failed"
    [ "$failed" = 0 ]
}
