#!/usr/bin/env bash
# Installs the system packages the build and the tests need, when they are missing.
set -euo pipefail

need=()
command -v git >/dev/null || need+=(git)
command -v pkg-config >/dev/null || need+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
# The service proxy's dataplane and the network-namespace tests.
command -v nft >/dev/null || need+=(nftables)
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl) # the webhook test posts with it
# The RBAC test reads the API with the official Python client, as in-cluster tools do.
/usr/bin/python3 -c 'import kubernetes' 2>/dev/null || need+=(python3-kubernetes)
# The IPVS tests boot Debian's kernel under qemu (the host kernel has no IPVS); the harness
# unpacks the kernel and busybox with dpkg and xz.
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
# The ingress benchmark: wrk drives the load; nginx, configured by the benchmark, is the peer.
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null && [ -x /usr/sbin/nginx ] || need+=(nginx)
# The etcd store backend: the etcd client crate builds its gRPC stubs with protoc; the store
# and high-availability tests start real etcd members (etcdctl checks them).
command -v protoc >/dev/null || need+=(protobuf-compiler)
# ...and the well-known types its protos import (google/protobuf/descriptor.proto).
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)

if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    target=()
    # bookworm's qemu-system-x86 would remove a backports qemu-utils (it Breaks older
    # qemu-system-common); take qemu from backports too where that is what is installed.
    if [[ " ${need[*]} " == *" qemu-system-x86 "* ]] && dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
        codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
        if ! grep -rqs "$codename-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$codename" |
                "${sudo_cmd[@]}" tee /etc/apt/sources.list.d/capstan-backports.sources >/dev/null
            "${sudo_cmd[@]}" apt-get update -qq
        fi
        target=(-t "$codename-backports")
        need+=(qemu-utils)
    fi
    # Packaged servers (nginx, etcd) must not start on install: they would hold ports the tests and
    # `capstan up` use (the benchmark starts its own nginx).
    policy=/usr/sbin/policy-rc.d
    made_policy=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
        "${sudo_cmd[@]}" chmod +x "$policy"
        made_policy=true
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${target[@]}" "${need[@]}"
    if $made_policy; then
        "${sudo_cmd[@]}" rm -f "$policy"
    fi
else
    echo "all system packages present"
fi
