#!/bin/bash
# One Pacemaker cluster node inside its own network + mount + UTS namespace (see cluster.sh / test/harness/pacemaker.ts).
# Run as: setsid ip netns exec NETNS unshare -m -u --propagation private node-holder.sh NODE NODEDIR
# NODEDIR holds the per-node folders bind-mounted over the system ones; corosync.conf, authkey and
# (optionally) the seed cib.xml are already in NODEDIR/etc-corosync and NODEDIR/lib-pacemaker/cib.
# Prints "HOLDER READY" on stdout once pacemakerd runs; then waits until SIGTERM and stops both daemons.
set -u
NODE=$1
D=$2
hostname "$NODE"
mkdir -p "$D"/{etc-corosync,lib-corosync,lib-pacemaker/{cib,pengine,blackbox,cores},log-pacemaker/bundles,log-corosync,run}
chown -R hacluster:haclient "$D"/lib-pacemaker "$D"/log-pacemaker
chmod 750 "$D"/lib-pacemaker "$D"/lib-pacemaker/*
chmod 770 "$D"/log-pacemaker
mount --bind "$D/etc-corosync" /etc/corosync
mount --bind "$D/lib-corosync" /var/lib/corosync
mount --bind "$D/lib-pacemaker" /var/lib/pacemaker
mount --bind "$D/log-pacemaker" /var/log/pacemaker
mount --bind "$D/log-corosync" /var/log/corosync
mount --bind "$D/run" /run
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mkdir -p /run/resource-agents /run/lock /run/crm
chown hacluster:haclient /run/crm
if [ -n "${OCF_OVERLAY:-}" ]; then
  # make the vesper provider visible: bind the agent dir onto its place
  mkdir -p /usr/lib/ocf/resource.d/vesper 2>/dev/null || true
  mount --bind -o ro "$OCF_OVERLAY" /usr/lib/ocf/resource.d/vesper
fi
corosync -f >"$D/corosync.out" 2>&1 &
CPID=$!
for _ in $(seq 1 200); do corosync-cmapctl >/dev/null 2>&1 && break; sleep 0.05; done
PCMK_logfacility=none PCMK_logfile="$D/log-pacemaker/pacemaker.log" pacemakerd -f >"$D/pacemakerd.out" 2>&1 &
PPID2=$!
stop() {
  kill -TERM "$PPID2" 2>/dev/null
  for _ in $(seq 1 300); do kill -0 "$PPID2" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$PPID2" 2>/dev/null
  kill -TERM "$CPID" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$CPID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$CPID" 2>/dev/null
  exit 0
}
trap stop TERM INT
echo "HOLDER READY $$"
while :; do sleep 1 & wait $!; done
