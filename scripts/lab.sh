#!/usr/bin/env bash
# A lab of real hosts on one machine: each host a network namespace of its own with its own
# Docker Engine, all wired to a switch (a bridge in a namespace of its own, so that the machine's
# firewall never sees the frames), and the machine itself on the switch as 10.250.0.1 (where a
# control plane can run). Host N is 10.250.0.(10+N) on eth0, with a default route via the
# machine. The images the tests use are copied into every Engine from the local one.
#
#   scripts/lab.sh up N        make hosts 1..N (what exists is kept) and print how to reach them
#   scripts/lab.sh exec N CMD  run CMD on host N (its network, DOCKER_HOST set to its Engine)
#   scripts/lab.sh unplug N / plug N    take host N's cable out of the switch / put it back
#   scripts/lab.sh cut N / mend N       host N stops / starts talking to the machine (the
#                              control plane), still reaching the other hosts
#   scripts/lab.sh kill N      host N dies: its link goes down, every process of it is killed
#   scripts/lab.sh down        remove everything the lab made, also after a failure
#
# Everything is named capstan-lab*; CAPSTAN_LAB_DIR (default /tmp/capstan-lab) holds the Engines'
# files. Needs root.
set -euo pipefail

dir="${CAPSTAN_LAB_DIR:-/tmp/capstan-lab}"
switch=capstan-lab-sw
images=(capstan.local/pause:3 capstan.local/testapp:latest)

host_ns() { echo "capstan-lab-h$1"; }
host_ip() { echo "10.250.0.$((10 + $1))"; }
socket() { echo "unix://$dir/h$1/docker.sock"; }
hosts() { ip netns list 2>/dev/null | awk '{print $1}' | sed -n 's/^capstan-lab-h\([0-9]*\)$/\1/p' | sort -n; }

make_switch() {
    ip netns list | grep -qw "$switch" && return
    ip netns add "$switch"
    ip -n "$switch" link set lo up
    ip -n "$switch" link add br0 type bridge
    ip -n "$switch" link set br0 up
    # The machine's own port: 10.250.0.1.
    ip link add capstan-lab0 type veth peer name up0 netns "$switch"
    ip -n "$switch" link set up0 master br0 up
    ip addr add 10.250.0.1/24 dev capstan-lab0
    ip link set capstan-lab0 up
}

wait_engine() { # host
    local i
    for i in $(seq 1 150); do
        docker -H "$(socket "$1")" info >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "lab: the Engine of host $1 did not start; its log:" >&2
    tail -20 "$dir/h$1/dockerd.log" >&2
    return 1
}

make_host() { # n
    local n=$1 ns h
    ns=$(host_ns "$n")
    h="$dir/h$n"
    if ! ip netns list | grep -qw "$ns"; then
        ip netns add "$ns"
        ip link add "capstan-lab-v$n" type veth peer name eth0 netns "$ns"
        ip link set "capstan-lab-v$n" netns "$switch"
        ip -n "$switch" link set "capstan-lab-v$n" master br0 up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "$(host_ip "$n")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" route add default via 10.250.0.1
    fi
    if ! docker -H "$(socket "$n")" info >/dev/null 2>&1; then
        mkdir -p "$h/data" "$h/exec"
        # An empty configuration: the machine's daemon.json sets what these flags set.
        echo '{}' >"$h/daemon.json"
        # nsenter --net, not `ip netns exec` (which remounts /sys and hides the cgroup mounts).
        nsenter --net="/run/netns/$ns" setsid /usr/sbin/dockerd --config-file "$h/daemon.json" \
            --data-root "$h/data" --exec-root "$h/exec" --pidfile "$h/docker.pid" -H "$(socket "$n")" \
            --storage-driver overlay2 --bip 172.31.255.1/24 --cgroup-parent "$ns" \
            >"$h/dockerd.log" 2>&1 </dev/null &
        wait_engine "$n"
    fi
    local image
    for image in "${images[@]}"; do
        docker -H "$(socket "$n")" image inspect "$image" >/dev/null 2>&1 && continue
        docker image inspect "$image" >/dev/null 2>&1 || { echo "lab: $image is not in the local Engine (run examples-repo/images/build.sh)" >&2; exit 1; }
        docker save "$image" | docker -H "$(socket "$n")" load -q >/dev/null
    done
}

# Kills every process of host n: those in its network namespace and its containers (by cgroup).
kill_host_processes() { # n
    local ns pids
    ns=$(host_ns "$1")
    for _ in 1 2 3; do
        pids=$( (ip netns pids "$ns" 2>/dev/null; cat /sys/fs/cgroup/pids/"$ns"/*/cgroup.procs /sys/fs/cgroup/pids/"$ns"/cgroup.procs 2>/dev/null) | sort -u || true)
        [[ -z "$pids" ]] && return 0
        kill -9 $pids 2>/dev/null || true
        sleep 0.2
    done
}

remove_host() { # n
    local n=$1 ns h
    ns=$(host_ns "$n")
    h="$dir/h$n"
    if docker -H "$(socket "$n")" info >/dev/null 2>&1; then
        docker -H "$(socket "$n")" ps -aq | xargs -r docker -H "$(socket "$n")" rm -f >/dev/null 2>&1 || true
        [[ -f "$h/docker.pid" ]] && kill "$(cat "$h/docker.pid")" 2>/dev/null || true
        for _ in $(seq 1 50); do
            [[ -f "$h/docker.pid" ]] && kill -0 "$(cat "$h/docker.pid")" 2>/dev/null || break
            sleep 0.2
        done
    fi
    kill_host_processes "$n"
    # Mounts the Engine left (sandbox namespaces, overlays), deepest first.
    awk -v d="$h/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    local c
    for c in /sys/fs/cgroup/*/"$ns"; do
        [[ -d "$c" ]] || continue
        find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
    ip -n "$switch" link del "capstan-lab-v$n" 2>/dev/null || true
    rm -rf "$h"
}

case "${1:-}" in
up)
    count="${2:?usage: lab.sh up N}"
    make_switch
    for n in $(seq 1 "$count"); do make_host "$n"; done
    for n in $(seq 1 "$count"); do
        echo "host $n  $(host_ip "$n")  netns $(host_ns "$n")  DOCKER_HOST=$(socket "$n")"
    done
    ;;
exec)
    n="${2:?usage: lab.sh exec N CMD...}"
    shift 2
    DOCKER_HOST="$(socket "$n")" exec nsenter --net="/run/netns/$(host_ns "$n")" "$@"
    ;;
unplug) ip -n "$switch" link set "capstan-lab-v${2:?}" down ;;
cut)
    nsenter --net="/run/netns/$(host_ns "${2:?}")" nft -f - <<EOF
table inet capstan-lab-cut {
    chain input { type filter hook input priority -10; ip saddr 10.250.0.1 drop; }
    chain output { type filter hook output priority -10; ip daddr 10.250.0.1 drop; }
    chain forward { type filter hook forward priority -10; ip saddr 10.250.0.1 drop; ip daddr 10.250.0.1 drop; }
}
EOF
    ;;
mend) nsenter --net="/run/netns/$(host_ns "${2:?}")" nft delete table inet capstan-lab-cut ;;
plug) ip -n "$switch" link set "capstan-lab-v${2:?}" up ;;
kill)
    ip -n "$switch" link set "capstan-lab-v${2:?}" down
    kill_host_processes "$2"
    ;;
down)
    for n in $(hosts); do remove_host "$n"; done
    ip link del capstan-lab0 2>/dev/null || true
    ip netns del "$switch" 2>/dev/null || true
    rm -rf "$dir"
    ;;
*)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
