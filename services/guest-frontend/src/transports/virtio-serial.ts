/**
 * virtio-serial port transport: one read-write fd on /dev/virtio-ports/<name>.
 *
 * Facts of virtio_console that shape this code: a port can be opened once, so one
 * fd serves both directions; read() returns 0 while no host is connected (not an
 * end of stream: wait and retry); a write blocks until a host is connected and
 * takes at most 32 KiB; host->guest reads return at most 4 KiB.
 */
import { writeSync } from "node:fs";
import { open, readdir, readFile, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { encodeFrame, FRAME_HEADER_BYTES, FrameDecoder, FrameError, FrameKind, ErrorCode, type Logger } from "@vesper/protocol";
import type { GuestTransport } from "./transport.js";

const MAX_WRITE = 32 * 1024;
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
    return this.sendFrame(kind, encodeFrame(kind, payload, this.maxFrameBytes), true);
  }

  sendFrame(kind: FrameKind, frame: Buffer, checked = false): Promise<void> {
    if (!checked && frame.length - FRAME_HEADER_BYTES > this.maxFrameBytes) {
      return Promise.reject(
        new FrameError(ErrorCode.TooLarge, `frame payload of ${frame.length - FRAME_HEADER_BYTES} bytes exceeds the ${this.maxFrameBytes}-byte limit`),
      );
    }
    void kind;
    // Fast path: nothing queued and a host is there, so write(2) cannot wait for one; the
    // kernel only waits until the host took the buffer (what the async write waits for
    // too, but from a pool thread: two extra thread hops, ~1 ms each under TCG).
    if (this.pendingWrites === 0 && this.hostPresent && !this.closed) {
      try {
        this.writeAllSync(frame);
        return Promise.resolve();
      } catch (err) {
        return Promise.reject(err as Error);
      }
    }
    // Writes are serialised so frames never interleave on the byte stream.
    this.pendingWrites++;
    const done = this.writeChain.then(() => this.writeAll(frame)).finally(() => this.pendingWrites--);
    this.writeChain = done.catch(() => undefined);
    return done;
  }

  private writeAllSync(buf: Buffer): void {
    let off = 0;
    while (off < buf.length) off += writeSync(this.fh.fd, buf, off, Math.min(MAX_WRITE, buf.length - off));
  }

  private async writeAll(buf: Buffer): Promise<void> {
    let off = 0;
    while (off < buf.length) {
      if (this.closed) throw new Error("virtio-serial transport closed");
      const { bytesWritten } = await this.fh.write(buf, off, Math.min(MAX_WRITE, buf.length - off));
      off += bytesWritten;
    }
  }

  async *incoming(): AsyncIterable<Uint8Array> {
    const chunk = Buffer.allocUnsafe(64 * 1024);
    while (!this.closed) {
      let n: number;
      try {
        ({ bytesRead: n } = await this.fh.read(chunk, 0, chunk.length, null));
      } catch (err) {
        if (this.closed) return;
        throw err;
      }
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
    await this.fh.close().catch(() => undefined);
  }
}
