#!/usr/bin/env bash
# Build the Vesper QEMU test guest from Debian packages only (no downloaded images).
#
#   bash deploy/guest-image/build.sh [--bundle FILE] [--no-frontend] [--out DIR] [--lz4]
#
# Outputs (default DIR = <repo>/.cache/guest):
#   DIR/vmlinuz        the Debian cloud kernel (linux-image-cloud-amd64's real package)
#   DIR/initramfs.img  busybox + host node + virtio/pvpanic modules + /vesper/guest-frontend.mjs
#   DIR/kernel-release the kernel's `uname -r`
# Inputs are cached under DIR/pkgs (debs) and DIR/kernel-<ver> (extracted); the initramfs is
# rebuilt only when its inputs (init.sh, this script, the bundle, node, busybox, kernel) change.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT="$REPO/.cache/guest"
BUNDLE="$REPO/dist/guest-frontend.mjs"
WITH_FRONTEND=1
# Uncompressed boots marginally faster than lz4 under TCG (3.0-3.3 s vs 3.4 s to a shell,
# measured); gzip/zstd cost ~1 s more. --lz4 halves the file (49 vs 90 MB).
COMPRESS=none

while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) BUNDLE=$(realpath "$2"); shift 2 ;;
    --no-frontend) WITH_FRONTEND=0; shift ;;
    --out) OUT=$(realpath -m "$2"); shift 2 ;;
    --lz4) COMPRESS=lz4; shift ;;
    --uncompressed) COMPRESS=none; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

T0=$(date +%s.%N)
step_start=$T0
step() { # print the time the previous step took
  local now; now=$(date +%s.%N)
  printf 'guest-image: %-40s %6.2f s\n' "$1" "$(awk -v a="$now" -v b="$step_start" 'BEGIN{print a-b}')"
  step_start=$now
}
die() { echo "guest-image: ERROR: $*" >&2; exit 1; }

if [ "$WITH_FRONTEND" = 1 ] && [ ! -f "$BUNDLE" ]; then
  die "$BUNDLE is missing. Build the guest frontend bundle first (npm run bundle / make bundle), or pass --bundle FILE / --no-frontend."
fi

# ---- host tools ---------------------------------------------------------------------------
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v lz4 >/dev/null || need_pkgs+=(lz4)
command -v strip >/dev/null || need_pkgs+=(binutils)
command -v node >/dev/null || die "node is not installed on the host (its binary goes into the guest)"
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "guest-image: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${need_pkgs[@]}" ||
    { apt-get update && apt-get install -y --no-install-recommends "${need_pkgs[@]}"; }
fi
step "host tools"

mkdir -p "$OUT/pkgs"

# ---- packages (kernel + busybox-static) ---------------------------------------------------
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}' || true)
if [ -z "$KPKG" ]; then
  apt-get update
  KPKG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
[ -n "$KPKG" ] || die "cannot resolve the package behind linux-image-cloud-amd64"

fetch() { # fetch PKG -> prints path of the .deb in $OUT/pkgs
  local pkg=$1 ver deb
  ver=$(apt-cache policy "$pkg" | awk '/Candidate:/{print $2}')
  deb=$(ls "$OUT/pkgs/${pkg}_"*"${ver#*:}"*_amd64.deb 2>/dev/null | head -1 || true)
  if [ -z "$deb" ]; then
    ( cd "$OUT/pkgs" && { apt-get download "$pkg" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get download "$pkg" >/dev/null; }; } ) ||
      die "apt-get download $pkg failed"
    ver=$(apt-cache policy "$pkg" | awk '/Candidate:/{print $2}')
    deb=$(ls -t "$OUT/pkgs/${pkg}_"*_amd64.deb | head -1)
  fi
  echo "$deb"
}
KDEB=$(fetch "$KPKG")
BBDEB=$(fetch busybox-static)
step "packages ($KPKG, busybox-static)"

KDIR="$OUT/kernel-$(basename "$KDEB" .deb)"
if [ ! -f "$KDIR/.done" ]; then
  rm -rf "$KDIR"; mkdir -p "$KDIR"
  dpkg-deb -x "$KDEB" "$KDIR"
  touch "$KDIR/.done"
fi
BBDIR="$OUT/busybox-$(basename "$BBDEB" .deb)"
if [ ! -f "$BBDIR/.done" ]; then
  rm -rf "$BBDIR"; mkdir -p "$BBDIR"
  dpkg-deb -x "$BBDEB" "$BBDIR"
  touch "$BBDIR/.done"
fi
KVER=$(ls "$KDIR/lib/modules" | head -1)
[ -n "$KVER" ] || die "no modules directory in $KDEB"
VMLINUZ_SRC="$KDIR/boot/vmlinuz-$KVER"
BUSYBOX="$BBDIR/bin/busybox"
[ -f "$VMLINUZ_SRC" ] || die "no kernel image in $KDEB"
if ! cmp -s "$VMLINUZ_SRC" "$OUT/vmlinuz" 2>/dev/null; then cp "$VMLINUZ_SRC" "$OUT/vmlinuz"; fi
echo "$KVER" >"$OUT/kernel-release"
step "kernel $KVER extracted"

# ---- stripped node (cached by the binary's identity) ----------------------------------------
NODE=$(readlink -f "$(command -v node)")
NODE_ID=$(stat -c '%s-%Y' "$NODE")
NODE_STRIPPED="$OUT/node-stripped-$NODE_ID"
if [ ! -f "$NODE_STRIPPED" ]; then
  rm -f "$OUT"/node-stripped-*
  strip -o "$NODE_STRIPPED.tmp" "$NODE" 2>/dev/null || cp "$NODE" "$NODE_STRIPPED.tmp"
  mv "$NODE_STRIPPED.tmp" "$NODE_STRIPPED"
fi
step "node stripped"

# ---- initramfs: rebuild only when inputs changed -------------------------------------------
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console pvpanic pvpanic-mmio"
stamp_of() {
  {
    echo "kver=$KVER compress=$COMPRESS frontend=$WITH_FRONTEND modules=$MODULES node=$NODE_ID"
    sha256sum "$HERE/init.sh" "$HERE/build.sh" "$BUSYBOX"
    if [ "$WITH_FRONTEND" = 1 ]; then sha256sum "$BUNDLE" | cut -d' ' -f1; fi
    ldd "$NODE" | awk '{print $(NF-1)}' | xargs -r stat -L -c '%n %s %Y' 2>/dev/null || true
  } | sha256sum | cut -d' ' -f1
}
STAMP=$(stamp_of)
if [ -f "$OUT/initramfs.img" ] && [ "$(cat "$OUT/initramfs.stamp" 2>/dev/null)" = "$STAMP" ]; then
  step "initramfs up to date"
else
  ROOT=$(mktemp -d "$OUT/root.XXXXXX")
  trap 'rm -rf "$ROOT"' EXIT
  mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,etc,www,vesper,lib64,lib/x86_64-linux-gnu,lib/modules/$KVER}
  chmod 1777 "$ROOT/tmp"
  # busybox and its applets (busybox --list contains "busybox" itself: never link over it)
  cp "$BUSYBOX" "$ROOT/bin/busybox"
  "$BUSYBOX" --list-full | while read -r path; do
    [ "${path##*/}" = busybox ] && continue
    [ -e "$ROOT/$path" ] && continue
    mkdir -p "$ROOT/$(dirname "$path")"
    ln -s /bin/busybox "$ROOT/$path"
  done
  # node + the libraries ldd names (copied to the path they resolve from)
  cp "$NODE_STRIPPED" "$ROOT/usr/bin/node"
  chmod 755 "$ROOT/usr/bin/node"
  ldd "$NODE" | awk '/=>/ {print $3} /^\s*\/lib/ {print $1}' | while read -r lib; do
    [ -f "$lib" ] || continue
    mkdir -p "$ROOT/$(dirname "$lib")"
    cp -L "$lib" "$ROOT/$lib"
  done
  # modules, flat, in /lib/modules/<kver>/<name>.ko (decompressed if the package compresses them)
  for m in $MODULES; do
    f=$(find "$KDIR/lib/modules/$KVER" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) | head -1)
    if [ -z "$f" ]; then
      grep -q "/$m.ko" "$KDIR/lib/modules/$KVER/modules.builtin" 2>/dev/null &&
        echo "guest-image: module $m is built in" || echo "guest-image: module $m not found (skipped)"
      continue
    fi
    case "$f" in
      *.xz) xz -dc "$f" >"$ROOT/lib/modules/$KVER/$m.ko" ;;
      *.zst) zstd -dc "$f" >"$ROOT/lib/modules/$KVER/$m.ko" ;;
      *.gz) gzip -dc "$f" >"$ROOT/lib/modules/$KVER/$m.ko" ;;
      *) cp "$f" "$ROOT/lib/modules/$KVER/$m.ko" ;;
    esac
  done
  # the frontend bundle
  if [ "$WITH_FRONTEND" = 1 ]; then cp "$BUNDLE" "$ROOT/vesper/guest-frontend.mjs"; fi
  # init, minimal /etc, console node (the kernel opens /dev/console before /init runs)
  cp "$HERE/init.sh" "$ROOT/init"
  chmod 755 "$ROOT/init"
  echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
  echo "root:x:0:" >"$ROOT/etc/group"
  echo "127.0.0.1 localhost" >"$ROOT/etc/hosts"
  mknod -m 600 "$ROOT/dev/console" c 5 1
  mknod -m 666 "$ROOT/dev/null" c 1 3
  step "initramfs tree ($(du -sm "$ROOT" | cut -f1) MB)"

  TMPIMG="$OUT/initramfs.img.tmp"
  if [ "$COMPRESS" = lz4 ]; then
    ( cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0 ) | lz4 -l -1 -q >"$TMPIMG"
  else
    ( cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0 ) >"$TMPIMG"
  fi
  mv "$TMPIMG" "$OUT/initramfs.img"
  echo "$STAMP" >"$OUT/initramfs.stamp"
  rm -rf "$ROOT"; trap - EXIT
  step "initramfs.img ($COMPRESS, $(du -m "$OUT/initramfs.img" | cut -f1) MB)"
fi

printf 'guest-image: done in %.2f s: %s/vmlinuz %s/initramfs.img (kernel %s)\n' \
  "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{print a-b}')" "$OUT" "$OUT" "$KVER"
