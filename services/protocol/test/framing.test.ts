import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import {
  DEFAULT_MAX_FRAME_BYTES,
  encodeFrame,
  FrameDecoder,
  FrameError,
  FrameKind,
  FRAME_HEADER_BYTES,
  type Frame,
} from "../src/index.js";

const kind = fc.constantFrom(FrameKind.Control, FrameKind.Data);
const payload = fc.uint8Array({ maxLength: 2048 });

/** Feeds `bytes` in the given chunk sizes; collects frames and errors. */
function decodeAll(dec: FrameDecoder, bytes: Uint8Array, cuts: number[]): { frames: Frame[]; errors: FrameError[] } {
  const frames: Frame[] = [];
  const errors: FrameError[] = [];
  let off = 0;
  for (const c of [...cuts, bytes.length]) {
    const end = Math.min(bytes.length, off + Math.max(1, c));
    for (const r of dec.push(bytes.subarray(off, end))) {
      if ("frame" in r) frames.push(r.frame);
      else errors.push(r.error);
    }
    off = end;
    if (off >= bytes.length) break;
  }
  return { frames, errors };
}

test("frames round-trip however the stream is cut", () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(kind, payload), { maxLength: 20 }), fc.array(fc.integer({ min: 1, max: 600 })), (msgs, cuts) => {
      const stream = Buffer.concat(msgs.map(([k, p]) => encodeFrame(k, p)));
      const dec = new FrameDecoder();
      const { frames, errors } = decodeAll(dec, stream, cuts);
      assert.equal(errors.length, 0);
      assert.equal(frames.length, msgs.length);
      frames.forEach((f, i) => {
        assert.equal(f.kind, msgs[i]![0]);
        assert.deepEqual(Buffer.from(f.payload), Buffer.from(msgs[i]![1]));
      });
      assert.equal(dec.pending, 0);
    }),
  );
});

test("any byte stream yields frames or clean FrameErrors, with bounded buffering", () => {
  const max = 4096;
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 20_000 }), fc.array(fc.integer({ min: 1, max: 5000 })), (bytes, cuts) => {
      const dec = new FrameDecoder(max);
      let off = 0;
      for (const c of [...cuts, bytes.length]) {
        const end = Math.min(bytes.length, off + c);
        for (const r of dec.push(bytes.subarray(off, end))) {
          if ("frame" in r) assert.ok(r.frame.payload.length <= max);
          else assert.ok(r.error instanceof FrameError);
        }
        // Never holds more than one frame plus its header waiting for the rest.
        assert.ok(dec.pending <= max + FRAME_HEADER_BYTES + c);
        off = end;
        if (off >= bytes.length) break;
      }
    }),
    { numRuns: 300 },
  );
});

test("garbage before and between frames is skipped and counted; the frames survive", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 300 }), payload, fc.uint8Array({ minLength: 1, maxLength: 300 }), payload, (junk1, p1, junk2, p2) => {
      // Junk must not itself contain a valid frame start to keep the expectation exact.
      const clean = (j: Uint8Array): Uint8Array => j.map((b) => (b === 0x56 ? 0x57 : b));
      const stream = Buffer.concat([clean(junk1), encodeFrame(FrameKind.Control, p1), clean(junk2), encodeFrame(FrameKind.Data, p2)]);
      const dec = new FrameDecoder();
      const { frames, errors } = decodeAll(dec, stream, [stream.length]);
      assert.equal(frames.length, 2);
      assert.ok(errors.length >= 2);
      assert.equal(dec.stats.bytesSkipped, junk1.length + junk2.length);
      assert.deepEqual(Buffer.from(frames[1]!.payload), Buffer.from(p2));
    }),
  );
});

test("an oversize frame is refused with TOO_LARGE, without buffering it, and the next frame still decodes", () => {
  const dec = new FrameDecoder(1024);
  const header = encodeFrame(FrameKind.Data, new Uint8Array(0)).subarray(0, FRAME_HEADER_BYTES);
  header.writeUInt32BE(10_000_000, 4);
  const next = encodeFrame(FrameKind.Control, Buffer.from("hello"));
  const { frames, errors } = decodeAll(dec, Buffer.concat([header, next]), [1000]);
  assert.equal(errors[0]?.code, "TOO_LARGE");
  assert.equal(frames.length, 1);
  assert.equal(Buffer.from(frames[0]!.payload).toString(), "hello");
});

test("encodeFrame refuses payloads above the limit", () => {
  assert.throws(() => encodeFrame(FrameKind.Data, new Uint8Array(DEFAULT_MAX_FRAME_BYTES + 1)), (e: unknown) => e instanceof FrameError && e.code === "TOO_LARGE");
});

test("unknown frame versions and kinds are reported, not delivered", () => {
  const bad = encodeFrame(FrameKind.Control, Buffer.from("x"));
  bad[2] = 9;
  const badKind = encodeFrame(FrameKind.Control, Buffer.from("y"));
  badKind[3] = 7;
  const { frames, errors } = decodeAll(new FrameDecoder(), Buffer.concat([bad, badKind, encodeFrame(FrameKind.Data, Buffer.from("z"))]), [100]);
  assert.deepEqual(frames.map((f) => Buffer.from(f.payload).toString()), ["z"]);
  assert.match(errors[0]!.message, /version 9/);
  assert.ok(errors.some((e) => /kind 7/.test(e.message)));
});
