#!/bin/sh
# /init of the Vesper test guest (busybox initramfs). Built into the image by build.sh.
#
# Kernel command line parameters understood:
#   vesper.guest=NAME        hostname and --guest-id of the frontend (default: vesper-guest)
#   vesper.services=a,b      services to start; known: httpd (busybox httpd on :80 serving /www)
#   vesper.debug=1           frontend stdout/stderr to /dev/ttyS0 instead of /tmp/frontend.log
#   vesper.frontend=0        do not start the guest frontend (fixture capture, debugging)
#   vesper.log_level=L       the frontend's log level (VESPER_LOG_LEVEL; trace adds per-page timing)
#   vesper.window_pages=N    pages per CPU the frontend sends ahead of the host's acks (VESPER_WINDOW_PAGES)
#   vesper.urgent_wait=W     how urgent readers wait: epoll (the default) or pool (VESPER_URGENT_WAIT)
#   vesper.coalesce_max_ms=N longest wait of an urgent event under a stream of events (VESPER_COALESCE_MAX_MS)
#   vesper.node_flags=F,G    flags for the frontend's node (default --jitless; "none" for none).
#   vesper.nice=N            the frontend's nice value (default 0; -10: lower detection latency, more cost under an event storm)
#                            Under TCG emulation V8's JIT costs far more guest CPU than it saves
#                            for an agent that mostly moves pages; on KVM, JIT is fine.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null

LOG=/run/init.log
log() { echo "init: $*" >>"$LOG"; }

GUEST=vesper-guest
SERVICES=
DEBUG=0
FRONTEND=1
NODE_FLAGS=--jitless
NICE=
LOG_LEVEL=info
URGENT_WAIT=epoll
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vesper.guest=*) GUEST="${arg#vesper.guest=}" ;;
    vesper.services=*) SERVICES="${arg#vesper.services=}" ;;
    vesper.debug=*) DEBUG="${arg#vesper.debug=}" ;;
    vesper.frontend=*) FRONTEND="${arg#vesper.frontend=}" ;;
    vesper.node_flags=*) NODE_FLAGS=$(echo "${arg#vesper.node_flags=}" | tr , ' ') ;;
    vesper.log_level=*) LOG_LEVEL="${arg#vesper.log_level=}" ;;
    vesper.window_pages=*) export VESPER_WINDOW_PAGES="${arg#vesper.window_pages=}" ;;
    vesper.urgent_wait=*) URGENT_WAIT="${arg#vesper.urgent_wait=}" ;;
    vesper.coalesce_max_ms=*) export VESPER_COALESCE_MAX_MS="${arg#vesper.coalesce_max_ms=}" ;;
    vesper.nice=*) NICE="${arg#vesper.nice=}" ;;
  esac
done
echo "$GUEST" >/run/vesper-guest

# Modules (some may be built in: a missing file is not an error).
KVER=$(uname -r)
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console pvpanic pvpanic-mmio; do
  f=/lib/modules/$KVER/$m.ko
  if [ -f "$f" ]; then
    insmod "$f" 2>>"$LOG" || log "insmod $m failed"
  else
    log "module $m not in image (built in?)"
  fi
done

hostname "$GUEST"
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up

# No udev: /dev/virtio-ports/<name> -> ../vportXpY. Ports are announced by the host over the
# control queue after the driver binds, so wait (bounded) for them to appear.
link_ports() {
  n=0
  mkdir -p /dev/virtio-ports
  for d in /sys/class/virtio-ports/*; do
    [ -f "$d/name" ] || continue
    name=$(cat "$d/name")
    [ -n "$name" ] || continue
    [ -e "/dev/${d##*/}" ] || continue
    ln -sfn "../${d##*/}" "/dev/virtio-ports/$name"
    n=$((n + 1))
  done
  [ "$n" -gt 0 ]
}
i=0
until link_ports; do
  i=$((i + 1))
  [ "$i" -ge 100 ] && { log "no virtio ports after 10 s"; break; }
  sleep 0.1
done

# Services (not oom-protected: they are what a probe is meant to watch die).
IFS_SAVE=$IFS
IFS=,
for s in $SERVICES; do
  case "$s" in
    httpd)
      mkdir -p /www
      echo "hello from $GUEST" >/www/index.html
      httpd -p 80 -h /www && log "httpd started" || log "httpd failed"
      ;;
    "") ;;
    *) log "unknown service $s" ;;
  esac
done
IFS=$IFS_SAVE

# Guest frontend, respawned if it dies. The loop and the agent both get oom_score_adj -1000
# (children inherit it: the agent must reset it for anything it spawns).
if [ "$FRONTEND" != 0 ] && [ -f /vesper/guest-frontend.mjs ]; then
  if [ "$DEBUG" = 1 ]; then FLOG=/dev/ttyS0; else FLOG=/tmp/frontend.log; fi
  (
    echo -1000 >/proc/self/oom_score_adj
    while :; do
      [ "$NODE_FLAGS" = none ] && NODE_FLAGS=
      # shellcheck disable=SC2086 # NODE_FLAGS is a list of words
      VESPER_LOG_LEVEL=$LOG_LEVEL VESPER_URGENT_WAIT=$URGENT_WAIT UV_THREADPOOL_SIZE=64 VESPER_NICE=$NICE node $NODE_FLAGS /vesper/guest-frontend.mjs --guest-id "$GUEST" --transport virtio-serial \
        </dev/null >>"$FLOG" 2>&1 &
      pid=$!
      echo -1000 >/proc/$pid/oom_score_adj 2>/dev/null
      echo $pid >/run/frontend.pid
      wait $pid
      echo "init: frontend pid $pid exited with status $?, restarting in 1 s" >>"$FLOG"
      sleep 1
    done
  ) </dev/null >/dev/null 2>&1 &
  echo $! >/run/frontend-loop.pid
else
  log "frontend not started (vesper.frontend=$FRONTEND)"
fi

# Keep the console clean for the test harness: only emergencies (a panic raises the level
# itself, so its trace still shows). Everything stays in dmesg.
[ "$DEBUG" = 1 ] || dmesg -n 1

# Console shell on ttyS0, respawned when it exits.
export PS1="$GUEST# "
export ENV=
while :; do
  setsid cttyhack sh
  sleep 0.2
done
