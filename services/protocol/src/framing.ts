/**
 * Length-prefixed frames for byte-stream transports (virtio-serial, unix sockets).
 *
 *   0      2       3      4          8
 *   +------+-------+------+----------+----------------+
 *   | "VS" | ver=1 | kind | len (BE) | payload (len)  |
 *   +------+-------+------+----------+----------------+
 *
 * `kind` lets the QEMU bridge route a frame (control vs. probe data) without
 * decoding protobuf. A bad header is never fatal: the decoder reports it, skips to
 * the next plausible magic and goes on, so a stream that starts mid-frame (a host
 * reader reconnecting to a guest port) resynchronises by itself.
 */
import { ErrorCode, FrameError } from "./errors.js";

export const FRAME_MAGIC_0 = 0x56; // 'V'
export const FRAME_MAGIC_1 = 0x53; // 'S'
export const FRAME_VERSION = 1;
export const FRAME_HEADER_BYTES = 8;
/** Hard ceiling; a transport may configure a lower limit, never a higher one. */
export const MAX_FRAME_BYTES = 1024 * 1024;
export const DEFAULT_MAX_FRAME_BYTES = 512 * 1024;

export const FrameKind = {
  /** Hello, idle requests, results, stats; and every host->guest message. */
  Control: 1,
  /** Raw ftrace pages. */
  Data: 2,
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

export interface Frame {
  readonly kind: FrameKind;
  readonly payload: Uint8Array;
}

export function encodeFrame(kind: FrameKind, payload: Uint8Array, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): Buffer {
  if (payload.length > maxFrameBytes) {
    throw new FrameError(
      ErrorCode.TooLarge,
      `frame payload of ${payload.length} bytes exceeds the ${maxFrameBytes}-byte limit`,
    );
  }
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  out[0] = FRAME_MAGIC_0;
  out[1] = FRAME_MAGIC_1;
  out[2] = FRAME_VERSION;
  out[3] = kind;
  out.writeUInt32BE(payload.length, 4);
  out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

export type DecodeResult = { readonly frame: Frame } | { readonly error: FrameError };

export interface FrameDecoderStats {
  frames: number;
  errors: number;
  bytesSkipped: number;
}

/**
 * Incremental decoder: push() chunks as they arrive, iterate the frames and errors
 * they complete. Memory is bounded by maxFrameBytes + one chunk.
 */
export class FrameDecoder {
  readonly stats: FrameDecoderStats = { frames: 0, errors: 0, bytesSkipped: 0 };
  private buf: Buffer = Buffer.alloc(0);
  private readonly maxFrameBytes: number;

  constructor(maxFrameBytes = DEFAULT_MAX_FRAME_BYTES) {
    if (maxFrameBytes > MAX_FRAME_BYTES) throw new RangeError(`maxFrameBytes above ${MAX_FRAME_BYTES}`);
    this.maxFrameBytes = maxFrameBytes;
  }

  /** Bytes held waiting for the rest of a frame. */
  get pending(): number {
    return this.buf.length;
  }

  *push(chunk: Uint8Array): Generator<DecodeResult> {
    this.buf = this.buf.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.buf, chunk]);
    for (;;) {
      if (this.buf.length < FRAME_HEADER_BYTES) {
        // A partial header that cannot be one is dropped now, not after more bytes.
        if (this.buf.length > 0 && this.buf[0] !== FRAME_MAGIC_0) yield this.skip("bad frame magic");
        else if (this.buf.length > 1 && this.buf[1] !== FRAME_MAGIC_1) yield this.skip("bad frame magic");
        else return;
        continue;
      }
      const b = this.buf;
      if (b[0] !== FRAME_MAGIC_0 || b[1] !== FRAME_MAGIC_1) {
        yield this.skip("bad frame magic");
        continue;
      }
      if (b[2] !== FRAME_VERSION) {
        yield this.skip(`unsupported frame version ${b[2]}`);
        continue;
      }
      const kind = b[3];
      if (kind !== FrameKind.Control && kind !== FrameKind.Data) {
        yield this.skip(`unknown frame kind ${kind}`);
        continue;
      }
      const len = b.readUInt32BE(4);
      if (len > this.maxFrameBytes) {
        yield this.skip(`frame of ${len} bytes exceeds the ${this.maxFrameBytes}-byte limit`, ErrorCode.TooLarge);
        continue;
      }
      if (b.length < FRAME_HEADER_BYTES + len) return;
      // Copy out so the frame does not pin the whole receive buffer.
      const payload = Buffer.from(b.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + len));
      this.buf = b.subarray(FRAME_HEADER_BYTES + len);
      this.stats.frames++;
      yield { frame: { kind, payload } };
    }
  }

  /** Drops bytes up to the next possible magic and reports why. */
  private skip(reason: string, code: ErrorCode = ErrorCode.Malformed): DecodeResult {
    let next = this.buf.indexOf(FRAME_MAGIC_0, 1);
    while (next !== -1 && next + 1 < this.buf.length && this.buf[next + 1] !== FRAME_MAGIC_1) {
      next = this.buf.indexOf(FRAME_MAGIC_0, next + 1);
    }
    const skipped = next === -1 ? this.buf.length : next;
    this.buf = this.buf.subarray(skipped);
    this.stats.errors++;
    this.stats.bytesSkipped += skipped;
    return { error: new FrameError(code, `${reason}; skipped ${skipped} bytes to resynchronise`) };
  }
}
