/**
 * virtio-serial port transport: one read-write fd on /dev/virtio-ports/<name>.
 *
 * Facts of virtio_console that shape this code: a port can be opened once, so one
 * fd serves both directions; read() returns 0 while no host is connected (not an
 * end of stream: wait and retry); a write blocks until a host is connected and
 * takes at most 32 KiB; host->guest reads return at most 4 KiB.
 */
import { read, writevSync } from "node:fs";
import { open, readdir, readFile, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { encodeFrame, FRAME_HEADER_BYTES, FrameDecoder, FrameError, FrameKind, ErrorCode, type Logger } from "@vesper/protocol";
import type { GuestTransport } from "./transport.js";

export const MAX_WRITE = 32 * 1024;
const HOST_ABSENT_RETRY_MS = 50;

/** /dev/virtio-ports/<name>, or the /dev/vportNpM that /sys names <name> (no udev in a minimal guest). */
export async function findVirtioPort(name: string): Promise<string> {
  const byName = join("/dev/virtio-ports", name);
  try {
    await (await open(byName, "r+")).close();
    return byName;
  } catch {
    /* fall through to sysfs */
  }
  const base = "/sys/class/virtio-ports";
  for (const port of await readdir(base).catch(() => [] as string[])) {
    const portName = (await readFile(join(base, port, "name"), "utf8").catch(() => "")).trim();
    if (portName === name) return join("/dev", port);
  }
  throw new Error(`no virtio-serial port named ${name}: is the guest started with -device virtserialport,name=${name}?`);
}

export class VirtioSerialTransport implements GuestTransport {
  readonly name = "virtio-serial" as const;
  private writeChain: Promise<void> = Promise.resolve();
  private pendingWrites = 0;
  /** A read returned data and none has returned 0 ("no host") since: writes will not wait for a host. */
  private hostPresent = false;
  private closed = false;
  /**
   * Ends the pending read's wait with -1. close() calls it: a read in the kernel is not ended by
   * closing its fd (only the host's next bytes end it), so the reader stops waiting for it.
   */
  private abandonRead: (() => void) | undefined;
  private readonly decoder: FrameDecoder;

  private constructor(
    private readonly fh: FileHandle,
    private readonly log: Logger,
    private readonly maxFrameBytes: number,
  ) {
    this.decoder = new FrameDecoder(maxFrameBytes);
  }

  static async open(path: string, log: Logger, maxFrameBytes: number): Promise<VirtioSerialTransport> {
    const fh = await open(path, "r+");
    log.info({ path }, "virtio-serial port open");
    return new VirtioSerialTransport(fh, log, maxFrameBytes);
  }

  send(kind: FrameKind, payload: Uint8Array): Promise<void> {
    return this.write([encodeFrame(kind, payload, this.maxFrameBytes)]);
  }

  readonly framed = true;

  trySendNow(kind: FrameKind, parts: readonly Buffer[]): boolean {
    void kind;
    if (this.pendingWrites !== 0 || !this.hostPresent || this.closed) return false;
    let bytes = 0;
    for (const p of parts) bytes += p.length;
    if (bytes - FRAME_HEADER_BYTES > this.maxFrameBytes) return false; // the async path says why
    this.writeAllSync(parts);
    return true;
  }

  sendParts(kind: FrameKind, parts: readonly Buffer[]): Promise<void> {
    void kind; // the caller wrote the frame header (kind included) into parts[0]
    let bytes = 0;
    for (const p of parts) bytes += p.length;
    if (bytes - FRAME_HEADER_BYTES > this.maxFrameBytes) {
      return Promise.reject(
        new FrameError(ErrorCode.TooLarge, `frame payload of ${bytes - FRAME_HEADER_BYTES} bytes exceeds the ${this.maxFrameBytes}-byte limit`),
      );
    }
    return this.write(parts);
  }

  private write(parts: readonly Buffer[]): Promise<void> {
    // Fast path: nothing queued and a host is there, so writev(2) cannot wait for one; the
    // kernel only waits until the host took the buffers (what the async write waits for
    // too, but from a pool thread: two extra thread hops, ~1 ms each under TCG).
    if (this.pendingWrites === 0 && this.hostPresent && !this.closed) {
      try {
        this.writeAllSync(parts);
        return Promise.resolve();
      } catch (err) {
        return Promise.reject(err as Error);
      }
    }
    // Writes are serialised so frames never interleave on the byte stream.
    this.pendingWrites++;
    const done = this.writeChain.then(() => this.writeAll(parts)).finally(() => this.pendingWrites--);
    this.writeChain = done.catch(() => undefined);
    return done;
  }

  private writeAllSync(parts: readonly Buffer[]): void {
    // One writev(2) per frame: the port takes at most MAX_WRITE per write and the kernel
    // serves each iovec with one write, so iovecs of up to 32 KiB cost one call in all.
    for (let iov = iovecs(parts, 0); iov.length > 0; ) iov = iovecs(iov, writevSync(this.fh.fd, iov));
  }

  private async writeAll(parts: readonly Buffer[]): Promise<void> {
    for (let iov = iovecs(parts, 0); iov.length > 0; ) {
      if (this.closed) throw new Error("virtio-serial transport closed");
      const { bytesWritten } = await this.fh.writev(iov);
      iov = iovecs(iov, bytesWritten);
    }
  }

  async *incoming(): AsyncIterable<Uint8Array> {
    const chunk = Buffer.allocUnsafe(64 * 1024);
    const fd = this.fh.fd;
    // fs.read with a callback, not FileHandle.read: the latter's promise machinery cost the
    // interpreted guest about as much as decoding the message it brings.
    const readChunk = (): Promise<number> =>
      new Promise((resolve, reject) => {
        this.abandonRead = () => resolve(-1);
        read(fd, chunk, 0, chunk.length, null, (err, n) => {
          this.abandonRead = undefined;
          if (err === null) resolve(n);
          else reject(err);
        });
      });
    while (!this.closed) {
      let n: number;
      try {
        n = await readChunk();
      } catch (err) {
        if (this.closed) return;
        throw err;
      }
      if (this.closed) return;
      this.hostPresent = n > 0;
      if (n === 0) {
        // No host on the other end right now.
        await sleep(HOST_ABSENT_RETRY_MS);
        continue;
      }
      for (const r of this.decoder.push(chunk.subarray(0, n))) {
        if ("frame" in r) {
          if (r.frame.kind === FrameKind.Control) yield r.frame.payload;
        } else {
          this.log.warn({ err: r.error.message }, "bad frame from host");
        }
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abandonRead?.();
    await this.fh.close().catch(() => undefined);
  }
}

/**
 * `parts` without their first `skip` bytes, as iovecs of MAX_WRITE bytes each (the last
 * shorter). The port turns every iovec into one virtqueue buffer and waits for the host to
 * take it, a round trip that costs far more than copying a few KiB, so parts are joined:
 * an iovec that would end inside a part boundary gets a copy of what it needs (at most one
 * MAX_WRITE copy per boundary), while long parts go out as slices, uncopied.
 */
export function iovecs(parts: readonly Buffer[], skip: number): Buffer[] {
  const rest: Buffer[] = [];
  for (const p of parts) {
    if (skip >= p.length) {
      skip -= p.length;
      continue;
    }
    rest.push(skip > 0 ? p.subarray(skip) : p);
    skip = 0;
  }
  const out: Buffer[] = [];
  let i = 0;
  let off = 0; // into rest[i]
  while (i < rest.length) {
    const p = rest[i]!;
    const left = p.length - off;
    if (left >= MAX_WRITE || i === rest.length - 1) {
      // A whole write from this part alone (or the end of the frame): a slice.
      const n = Math.min(MAX_WRITE, left);
      out.push(p.subarray(off, off + n));
      off += n;
      if (off === p.length) {
        i++;
        off = 0;
      }
      continue;
    }
    // The part ends before a full write: join it with what follows, by copying.
    let size = 0;
    for (let k = i, o = off; k < rest.length && size < MAX_WRITE; k++, o = 0) size += Math.min(rest[k]!.length - o, MAX_WRITE - size);
    const chunk = Buffer.allocUnsafe(size);
    let filled = 0;
    while (filled < size) {
      const q = rest[i]!;
      const n = Math.min(q.length - off, size - filled);
      q.copy(chunk, filled, off, off + n);
      filled += n;
      off += n;
      if (off === q.length) {
        i++;
        off = 0;
      }
    }
    out.push(chunk);
  }
  return out;
}
