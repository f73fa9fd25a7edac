/**
 * Fuzz target for everything the host reads from a guest, run for a bounded time
 * (VESPER_FUZZ_SECONDS, default 30, shared by the properties below; `make test-fuzz`).
 * The unit properties next to each decoder (protocol/test/framing, ring-codec,
 * probe-listener/test/ftrace-fuzz) run a fixed number of cases each; this target
 * runs as many as fit in its time, on the compositions the services actually use:
 *
 * - the frame decoder on an arbitrary byte stream cut at arbitrary points: never
 *   throws, never holds more than one frame plus one chunk, and valid frames in the
 *   stream come out intact;
 * - a GuestMessage (valid, mutated, truncated, arbitrary) through decodeGuestMessage:
 *   a message or a FrameError, nothing else;
 * - the listener's path for a loaded probe: buildDecoder on mutated load results
 *   (formats and header page that lie), then decoding mutated pages: a decoder or
 *   VesperError MALFORMED, then a page or FrameError; bounded time per case.
 *
 * 0 crashes, 0 hangs (each case has a time budget), bounded memory per frame.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { buildDecoder, pagesOf, type GuestCounters } from "@vesper/probe-listener";
import {
  decodeGuestMessage,
  DEFAULT_MAX_FRAME_BYTES,
  encodeFrame,
  encodeGuestMessage,
  ErrorCode,
  FRAME_HEADER_BYTES,
  FrameDecoder,
  FrameError,
  FrameKind,
  PROTOCOL_VERSION,
  ring,
  VesperError,
} from "@vesper/protocol";

const SECONDS = Number(process.env.VESPER_FUZZ_SECONDS ?? 30);
const PER_PROPERTY_MS = Math.max(500, Math.floor((SECONDS * 1000) / 4));
const params = { numRuns: 1_000_000, interruptAfterTimeLimit: PER_PROPERTY_MS, markInterruptAsFailure: false } as const;
/** Longest one case may take before it counts as a hang. */
const CASE_BUDGET_MS = 2_000;

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "services", "probe-listener", "test", "fixtures", "host-6.18.44-fc-v657");

function timed<T>(fn: () => T): T {
  const t0 = performance.now();
  const r = fn();
  const ms = performance.now() - t0;
  assert.ok(ms < CASE_BUDGET_MS, `one case took ${ms.toFixed(0)} ms`);
  return r;
}

/** Byte-level mutations: flips, overwrites, truncations and insertions. */
function mutate(base: Uint8Array): fc.Arbitrary<Uint8Array> {
  return fc
    .array(
      fc.oneof(
        fc.record({ op: fc.constant("set" as const), at: fc.nat(), v: fc.integer({ min: 0, max: 255 }) }),
        fc.record({ op: fc.constant("cut" as const), at: fc.nat(), v: fc.constant(0) }),
        fc.record({ op: fc.constant("ins" as const), at: fc.nat(), v: fc.integer({ min: 0, max: 255 }) }),
      ),
      { maxLength: 8 },
    )
    .map((ops) => {
      let b = Buffer.from(base);
      for (const o of ops) {
        const at = b.length === 0 ? 0 : o.at % (b.length + 1);
        if (o.op === "set" && at < b.length) b[at] = o.v;
        else if (o.op === "cut") b = b.subarray(0, at);
        else if (o.op === "ins") b = Buffer.concat([b.subarray(0, at), Buffer.from([o.v]), b.subarray(at)]);
      }
      return b;
    });
}

function mutateText(base: string): fc.Arbitrary<string> {
  return fc
    .array(fc.record({ at: fc.nat(), del: fc.nat({ max: 12 }), ins: fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom("offset:", "size:", "999999999", "-1", ";", "\n", "\t", "field:", "[", "]")) }), { maxLength: 6 })
    .map((ops) => {
      let s = base;
      for (const o of ops) {
        const at = s.length === 0 ? 0 : o.at % (s.length + 1);
        s = s.slice(0, at) + o.ins + s.slice(at + o.del);
      }
      return s;
    });
}

describe("fuzz: guest input, time-bounded", () => {
  it("frame decoder: arbitrary streams in arbitrary chunks", () => {
    const max = 4096;
    const frame = fc.tuple(fc.constantFrom(FrameKind.Control, FrameKind.Data), fc.uint8Array({ maxLength: 600 })).map(([k, p]) => ({ k, p }));
    const piece = fc.oneof(
      frame.map((f) => ({ bytes: encodeFrame(f.k, f.p, max), frame: f })),
      fc.uint8Array({ maxLength: 64 }).map((b) => ({ bytes: Buffer.from(b), frame: undefined })),
      // Headers that lie: huge lengths, other versions and kinds.
      fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 5 }), fc.nat()).map(([v, k, len]) => {
        const h = Buffer.from([0x56, 0x53, v, k, 0, 0, 0, 0]);
        h.writeUInt32BE(len >>> 0, 4);
        return { bytes: h, frame: undefined };
      }),
    );
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 20 }), fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 10 }), (pieces, cuts) => {
        timed(() => {
          const stream = Buffer.concat(pieces.map((p) => p.bytes));
          const dec = new FrameDecoder(max);
          const got: Array<{ kind: number; payload: Uint8Array }> = [];
          let pos = 0;
          let i = 0;
          while (pos < stream.length) {
            const n = cuts[i++ % cuts.length]!;
            for (const r of dec.push(stream.subarray(pos, pos + n))) {
              if ("frame" in r) got.push(r.frame);
              else assert.ok(r.error instanceof FrameError);
            }
            pos += n;
            assert.ok(dec.pending <= FRAME_HEADER_BYTES + max + n, `holds ${dec.pending} bytes`);
          }
          // Every frame that sits in the stream after clean bytes comes out whole, in order.
          for (const f of got) assert.ok(f.payload.length <= max);
          const clean = pieces.every((p) => p.frame !== undefined);
          if (clean) {
            assert.deepEqual(
              got.map((f) => [f.kind, Buffer.from(f.payload).toString("hex")]),
              pieces.map((p) => [p.frame!.k, Buffer.from(p.frame!.p).toString("hex")]),
            );
          }
        });
      }),
      params,
    );
  });

  it("ring messages: valid, mutated, truncated and arbitrary GuestMessages", () => {
    const page = fc.record({ cpu: fc.nat({ max: 4096 }), seq: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), page: fc.uint8Array({ maxLength: 256 }).map((b) => Buffer.from(b)) });
    const body: fc.Arbitrary<ring.GuestMessage["body"]> = fc.oneof(
      fc.record({ $case: fc.constant("idle" as const), value: fc.constant({}) }),
      fc.record({ $case: fc.constant("data" as const), value: fc.record({ probe: fc.string({ maxLength: 40 }), pages: fc.array(page, { maxLength: 4 }), loadId: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), acked: fc.array(fc.record({ cpu: fc.nat({ max: 4096 }), seq: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), events: fc.option(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), { nil: undefined }) }), { maxLength: 3 }), runs: fc.array(fc.record({ cpu: fc.nat({ max: 4096 }), firstSeq: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), count: fc.nat(), pageSize: fc.nat(), lastLength: fc.nat(), data: fc.uint8Array({ maxLength: 512 }).map((b) => Buffer.from(b)) }), { maxLength: 2 }), ackSoon: fc.boolean(), skips: fc.array(fc.record({ cpu: fc.nat({ max: 4096 }), from: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), to: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }), { maxLength: 2 }) }) }),
      fc.record({
        $case: fc.constant("hello" as const),
        value: fc.record({ kernelRelease: fc.string(), bootId: fc.string(), loadedProbes: fc.array(fc.string(), { maxLength: 4 }) }).map((h) => ring.Hello.fromPartial(h)),
      }),
      fc.record({
        $case: fc.constant("result" as const),
        value: fc.record({ commandId: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), code: fc.integer({ min: -1, max: 9 }), message: fc.string() }).map((r) => ring.Result.fromPartial(r)),
      }),
    );
    const valid = fc.record({ guestId: fc.string({ maxLength: 70 }), seq: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), body }).map((m) =>
      encodeGuestMessage({ version: PROTOCOL_VERSION, guestId: m.guestId, seq: m.seq, body: m.body }),
    );
    const input = fc.oneof(valid, valid.chain((b) => mutate(b)), fc.uint8Array({ maxLength: 512 }));
    fc.assert(
      fc.property(input, (bytes) => {
        timed(() => {
          try {
            const m = decodeGuestMessage(bytes);
            assert.equal(m.version, PROTOCOL_VERSION);
            assert.ok(m.body !== undefined);
          } catch (err) {
            assert.ok(err instanceof FrameError, `not a FrameError: ${String(err)}`);
            assert.equal(err.code, ErrorCode.Malformed);
          }
        });
      }),
      params,
    );
  });

  const exp = JSON.parse(readFileSync(path.join(FIXTURES, "expected.json"), "utf8")) as { formats: string[]; pages: { file: string }[] };
  const formatTexts = exp.formats.map((f) => {
    const [, system, name] = f.split("/");
    return { system: system!, name: name!, text: readFileSync(path.join(FIXTURES, f), "utf8") };
  });
  const headerText = readFileSync(path.join(FIXTURES, "header_page"), "utf8");
  const pages = exp.pages.slice(0, 6).map((p) => readFileSync(path.join(FIXTURES, p.file)));
  const spec = ring.ProbeSpec.fromPartial({ name: "fuzz" });

  it("listener path: lying load results, then mutated pages through what they built", () => {
    const loaded = fc
      .tuple(fc.array(fc.oneof(fc.constant(undefined), mutateText(formatTexts[0]!.text)), { minLength: formatTexts.length, maxLength: formatTexts.length }), fc.oneof(fc.constant(headerText), mutateText(headerText)))
      .map(([muts, header]) =>
        ring.LoadedProbe.fromPartial({
          formats: formatTexts.map((f, i) => ({ system: f.system, name: f.name, format: muts[i] ?? f.text })),
          headerPage: header,
          loadId: 1n,
        }),
      );
    const page = fc.oneof(...pages.map((p) => fc.constant(p)), ...pages.map((p) => mutate(p)), fc.uint8Array({ maxLength: 4200 }));
    fc.assert(
      fc.property(loaded, fc.array(page, { maxLength: 3 }), (lp, ps) => {
        timed(() => {
          let decoder: ReturnType<typeof buildDecoder>;
          try {
            decoder = buildDecoder(spec, lp);
          } catch (err) {
            assert.ok(err instanceof VesperError && err.code === ErrorCode.Malformed, `not MALFORMED: ${String(err)}`);
            return;
          }
          for (const p of ps) {
            try {
              const d = decoder.decode(p);
              assert.ok(d.events.length <= p.length, "no more events than bytes");
            } catch (err) {
              assert.ok(err instanceof FrameError, `not a FrameError: ${String(err)}`);
            }
          }
        });
      }),
      params,
    );
  });

  it("page runs: cut into pages inside their bytes, or refused whole and counted", () => {
    const run = fc.record({
      cpu: fc.nat({ max: 8 }),
      firstSeq: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
      count: fc.oneof(fc.nat({ max: 40 }), fc.nat()),
      pageSize: fc.oneof(fc.constant(4096), fc.constant(64), fc.nat({ max: 1 << 20 })),
      lastLength: fc.oneof(fc.nat({ max: 4096 }), fc.nat()),
      data: fc.uint8Array({ maxLength: 3 * 4096 }).map((b) => Buffer.from(b)),
    });
    fc.assert(
      fc.property(fc.array(run, { maxLength: 3 }), (runs) => {
        timed(() => {
          const c = { badPages: 0 } as GuestCounters;
          let bad = 0;
          const pages = pagesOf(ring.ProbeData.fromPartial({ probe: "p", runs }), c, () => bad++);
          let bytes = 0;
          for (const p of pages) {
            const owner = runs.find((r) => r.data.buffer === p.page.buffer && p.page.byteOffset >= r.data.byteOffset && p.page.byteOffset + p.page.length <= r.data.byteOffset + r.data.length);
            assert.ok(owner !== undefined, "every page lies inside its run's bytes");
            assert.ok(p.page.length <= owner.pageSize);
            bytes += p.page.length;
          }
          assert.ok(bytes <= runs.reduce((n, r) => n + r.data.length, 0));
          void bad;
          for (const r of runs) {
            let refused = 0;
            const one = pagesOf(ring.ProbeData.fromPartial({ probe: "p", runs: [r] }), { badPages: 0 } as GuestCounters, () => refused++);
            assert.ok((refused === 0 && one.length === r.count) || (refused === 1 && one.length === 0), "a run is taken whole or refused once");
          }
        });
      }),
      params,
    );
  });

  it("default frame limit: a data message larger than a frame is what the listener drops unread", () => {
    // The listener's oversize check and the frame decoder agree on the limit.
    const dec = new FrameDecoder();
    const big = Buffer.alloc(FRAME_HEADER_BYTES);
    big.set([0x56, 0x53, 1, FrameKind.Data]);
    big.writeUInt32BE(DEFAULT_MAX_FRAME_BYTES + 1, 4);
    const out = [...dec.push(big)];
    assert.ok(out.length === 1 && "error" in out[0]! && out[0].error.code === ErrorCode.TooLarge);
  });
});
