#!/usr/bin/env bash
# Builds the images the example (and Capstan's tests) use into the local Docker Engine. There is
# no registry to pull from, so every image is made here from files this project produces:
#
#   capstan.local/guestbook:1, :2   the guestbook frontend: Capstan's static test program
#   capstan.local/testapp:latest    the same program, for tests (probe server, HTTP client), with
#                                   Debian's static busybox as /bin/sh, tar, cat ... (exec and cp)
#   capstan.local/pause:3           the same program as the pod sandbox (`pause` mode)
#   capstan.local/redis:7           redis-server from Debian's redis-tools package, with the
#                                   shared libraries it needs, on an empty base
#
# Usage: build.sh [--force]    (images that exist are kept unless --force)
# The Capstan source tree is found from this script's location, or $CAPSTAN_SOURCE.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
src="${CAPSTAN_SOURCE:-$(cd "$here/../.." && pwd)}"
force=false
[[ "${1:-}" == "--force" ]] && force=true
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

have() { [[ $force == false ]] && docker image inspect "$1" >/dev/null 2>&1; }
# The test program's images carry the hash of its source: a changed program is built again.
# (and of the way the images are put together: bump the tools line to rebuild them).
tools="busybox-static /tmp"
app_source=$( (echo "$tools"; cat "$src/tests/app/Cargo.toml" "$src"/tests/app/src/*.rs) | sha256sum | cut -c1-16)
have_app() {
    [[ $force == false ]] &&
        [[ "$(docker image inspect -f '{{index .Config.Labels "dev.capstan.source"}}' "$1" 2>/dev/null)" == "$app_source" ]]
}

build_scratch() { # tag context-dir
    docker build -q -t "$1" "$2" >/dev/null 2>"$work/build.log" || { cat "$work/build.log" >&2; exit 1; }
    echo "built $1"
}

# The static test program.
if ! (have_app capstan.local/guestbook:1 && have_app capstan.local/guestbook:2 && have_app capstan.local/testapp:latest && have_app capstan.local/pause:3); then
    target_dir="${CARGO_TARGET_DIR:-$src/target}"
    # +crt-static with an explicit --target applies to the program only, not to build scripts.
    (cd "$src" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
        --target x86_64-unknown-linux-gnu -p capstan-testapp)
    bin="$target_dir/x86_64-unknown-linux-gnu/release/capstan-testapp"
    mkdir -p "$work/app/tools/bin" "$work/app/tools/tmp" "$work/tools"
    chmod 1777 "$work/app/tools/tmp"
    cp "$bin" "$work/app/capstan-testapp"
    # A shell and the tools kubectl exec and cp use: busybox, linked under the applets' names.
    (cd "$work/tools" && apt-get download -qq busybox-static 2>/dev/null)
    dpkg -x "$work"/tools/busybox-static_*.deb "$work/tools/root"
    cp "$work/tools/root/bin/busybox" "$work/app/tools/bin/busybox"
    for applet in $("$work/app/tools/bin/busybox" --list); do
        [[ $applet == busybox ]] || ln -s busybox "$work/app/tools/bin/$applet"
    done
    for spec in "guestbook:1 1 guestbook" "guestbook:2 2 guestbook" "testapp:latest test serve" "pause:3 pause pause"; do
        read -r tag version mode <<<"$spec"
        have_app "capstan.local/$tag" && continue
        with_tools=""
        [[ $tag == testapp:latest ]] && with_tools="COPY tools/ /"
        cat >"$work/app/Dockerfile" <<DOCKERFILE
FROM scratch
COPY capstan-testapp /capstan-testapp
$with_tools
LABEL dev.capstan.version="$version" dev.capstan.source="$app_source"
ENTRYPOINT ["/capstan-testapp"]
CMD ["$mode"]
DOCKERFILE
        build_scratch "capstan.local/$tag" "$work/app"
    done
fi

# redis-server from Debian's package: the binary and the closure of its shared libraries.
if ! have capstan.local/redis:7; then
    mkdir -p "$work/debs" "$work/redis/root/usr/bin" "$work/redis/root/data"
    (cd "$work/debs" && apt-get download -qq redis-tools libjemalloc2 liblzf1 2>/dev/null)
    for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/debs/root"; done
    # Debian ships one binary that acts by the name it is run as.
    cp "$work/debs/root/usr/bin/redis-check-rdb" "$work/redis/root/usr/bin/redis-server"
    export LD_LIBRARY_PATH="$work/debs/root/usr/lib/x86_64-linux-gnu"
    if ldd "$work/redis/root/usr/bin/redis-server" | grep -q "not found"; then
        echo "redis-server needs libraries this machine lacks:" >&2
        ldd "$work/redis/root/usr/bin/redis-server" | grep "not found" >&2
        exit 1
    fi
    ldd "$work/redis/root/usr/bin/redis-server" | grep -o '/[^ ]*' | while read -r lib; do
        dest="$work/redis/root$(dirname "$lib")"
        case "$lib" in "$LD_LIBRARY_PATH"/*) dest="$work/redis/root/usr/lib/x86_64-linux-gnu" ;; esac
        mkdir -p "$dest"
        cp -L "$lib" "$dest/"
    done
    unset LD_LIBRARY_PATH
    cat >"$work/redis/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY root/ /
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["/usr/bin/redis-server"]
DOCKERFILE
    build_scratch capstan.local/redis:7 "$work/redis"
fi
