/**
 * Finds guest channel sockets: `<dir>/<guest>.sock` in the socket directories
 * Vesper's own QEMU launcher uses, and libvirt's per-domain channel sockets
 * (`/var/lib/libvirt/qemu/channel/target/domain-<id>-<name>/org.vesper.0`).
 * Polling, because inotify says nothing useful about sockets QEMU re-creates.
 */
import { readdir, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { GUEST_ID_RE } from "@vesper/protocol";

export interface GuestChannel {
  readonly guest: string;
  readonly path: string;
  readonly source: "socket-dir" | "libvirt";
}

export const LIBVIRT_CHANNEL_DIR = "/var/lib/libvirt/qemu/channel/target";
export const CHANNEL_NAME = "org.vesper.0";

async function isSocket(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isSocket();
  } catch {
    return false;
  }
}

export async function discoverChannels(socketDirs: readonly string[], libvirtDir: string | undefined): Promise<GuestChannel[]> {
  const found: GuestChannel[] = [];
  for (const dir of socketDirs) {
    for (const f of await readdir(dir).catch(() => [] as string[])) {
      if (!f.endsWith(".sock")) continue;
      const guest = basename(f, ".sock");
      const path = join(dir, f);
      if (GUEST_ID_RE.test(guest) && (await isSocket(path))) found.push({ guest, path, source: "socket-dir" });
    }
  }
  if (libvirtDir !== undefined) {
    for (const d of await readdir(libvirtDir).catch(() => [] as string[])) {
      const m = /^domain-\d+-(.+)$/.exec(d);
      const guest = m?.[1];
      const path = join(libvirtDir, d, CHANNEL_NAME);
      if (guest !== undefined && GUEST_ID_RE.test(guest) && (await isSocket(path))) found.push({ guest, path, source: "libvirt" });
    }
  }
  return found;
}
