#!/usr/bin/env bash
# Installs and starts what Vesper needs on a Debian 12 host; safe to run again.
#   apt: protoc (code generation), QEMU (TCG guests), busybox/cpio/lz4 (guest image), gcc (uprobe
#        targets in tests and benches), nats-server,
#        corosync + pacemaker (the failover evaluation)
#   npm: the locked dependencies
#   a NATS server with JetStream on 127.0.0.1:4222 if none answers there
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v lz4 >/dev/null || need+=(lz4)
# Tests and benches compile small C programs to put uprobes on (and bench/load).
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
# The failover evaluation (test/failover, bench/failover): a real two-node cluster.
command -v corosync >/dev/null || need+=(corosync)
command -v crm_resource >/dev/null || need+=(pacemaker pacemaker-cli-utils)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

nats_up() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }
if ! nats_up; then
  echo "setup: starting nats-server with JetStream on 127.0.0.1:4222"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  for _ in $(seq 1 100); do nats_up && break; sleep 0.1; done
  nats_up || { echo "setup: nats-server did not come up; see /var/log/nats-server.log" >&2; exit 1; }
fi
# tracefs for the host-kernel integration tests
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
echo "setup: ok"
