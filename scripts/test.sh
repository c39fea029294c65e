#!/usr/bin/env bash
# The project's test command: installs what the tests need, builds what they use, and runs every
# test and every benchmark in its quick mode. Safe to run again; CI runs it through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/capstan/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n==> %s\n' "$*"; }

step "system packages"
scripts/install-deps.sh

step "docker engine"
if docker info --format 'Docker Engine {{.ServerVersion}}' 2>/dev/null; then
    # Leftovers of an earlier, interrupted run (tests label everything they make).
    docker ps -aq --filter label=capstan.test | xargs -r docker rm -f >/dev/null
    docker network ls -q --filter label=capstan.test | xargs -r docker network rm >/dev/null
elif [[ "${CI:-}" == "true" ]]; then
    echo "the Docker Engine does not answer; the tests need it" >&2
    exit 1
else
    echo "*** no Docker Engine: tests that need it will skip ***"
fi

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi

step "tests that restart the Docker Engine (run alone: nothing else may use the Engine meanwhile)"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked -p capstan --test node --run-ignored only --no-fail-fast
else
    cargo test --locked -p capstan --test node -- --ignored
fi

step "benchmarks (quick mode)"
cargo bench --locked -p capstan-git --bench loader -- --quick
cargo bench --locked -p capstan-daemon --bench api -- --quick --store etcd
cargo bench --locked -p capstan-scheduler --bench scheduler -- --quick
cargo bench --locked -p capstan-daemon --bench controllers -- --quick
cargo bench --locked --bench pod_start -- --quick
cargo bench --locked --bench commit_to_ready -- --quick
cargo bench --locked --bench pod_network -- --quick
cargo bench --locked --bench streams -- --quick
cargo bench --locked --bench ingress -- --quick
cargo bench --locked --bench failover -- --quick
cargo bench --locked -p capstan-proxy --bench sync -- --quick

step "all tests passed"
