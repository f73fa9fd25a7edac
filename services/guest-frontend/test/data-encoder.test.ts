/** The hand-rolled data encoder must produce exactly the generated encoder's bytes. */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { decodeGuestMessage, encodeFrame, encodeGuestMessage, FrameKind, PROTOCOL_VERSION, ring } from "@vesper/protocol";
import { encodeDataMessage, type CpuSeq, type DataRun, type SeqSkip } from "../src/data-encoder.js";

const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
const u32 = fc.nat({ max: 2 ** 32 - 1 });
const cpuSeq = fc.record({ cpu: u32, seq: fc.oneof(u64, fc.maxSafeNat()), events: fc.option(u64, { nil: undefined }) });
const skip = fc.record({ cpu: u32, from: fc.oneof(u64, fc.maxSafeNat()), to: fc.oneof(u64, fc.maxSafeNat()) });
const run = fc.record({ cpu: u32, firstSeq: fc.maxSafeNat(), count: u32, pageSize: u32, lastLength: u32, data: fc.uint8Array({ maxLength: 300 }) });

function generated(guestId: string, seq: bigint, probe: string, loadId: bigint, acked: CpuSeq[], runs: DataRun[], ackSoon = false, skips: SeqSkip[] = []): Uint8Array {
  return encodeGuestMessage({
    version: PROTOCOL_VERSION,
    guestId,
    seq,
    body: {
      $case: "data",
      value: {
        probe,
        pages: [],
        loadId,
        acked: acked.map((a) => ({ cpu: a.cpu, seq: BigInt(a.seq), events: a.events })),
        runs: runs.map((r) => ({ ...r, firstSeq: BigInt(r.firstSeq), data: Buffer.from(r.data) })),
        ackSoon,
        skips: skips.map((k) => ({ cpu: k.cpu, from: BigInt(k.from), to: BigInt(k.to) })),
      },
    },
  });
}

test("encodeDataMessage matches GuestMessage.encode byte for byte", () => {
  fc.assert(
    fc.property(
      fc.string(),
      u64,
      fc.string(),
      u64,
      fc.array(cpuSeq, { maxLength: 3 }),
      fc.array(run, { maxLength: 3 }),
      fc.boolean(),
      fc.array(skip, { maxLength: 2 }),
      (guestId, seq, probe, loadId, acked, runs, ackSoon, skips) => {
        const parts = encodeDataMessage(PROTOCOL_VERSION, guestId, seq, { probe, loadId, acked, runs, ackSoon, skips });
        assert.deepEqual(new Uint8Array(Buffer.concat(parts)), generated(guestId, seq, probe, loadId, acked, runs, ackSoon, skips));
      },
    ),
    { numRuns: 500 },
  );
});

test("the cached guest and probe fields follow a new version, guest id or load id", () => {
  const runs: DataRun[] = [{ cpu: 0, firstSeq: 1, count: 1, pageSize: 4096, lastLength: 20, data: Buffer.alloc(20, 1) }];
  for (const [version, guestId, probe, loadId] of [
    [PROTOCOL_VERSION, "web1", "process", 1n],
    [PROTOCOL_VERSION, "web1", "process", 2n ** 63n],
    [PROTOCOL_VERSION, "web2", "process", 2n ** 63n],
    [0, "web2", "process", 5n],
    [PROTOCOL_VERSION, "web2", "files", 5n],
    [PROTOCOL_VERSION, "web2", "process", 1n],
  ] as const) {
    const parts = encodeDataMessage(version, guestId, 3n, { probe, loadId, acked: [], runs });
    const back = ring.GuestMessage.decode(Buffer.concat(parts));
    assert.equal(back.version, version);
    assert.equal(back.guestId, guestId);
    assert.equal(back.body?.$case === "data" && back.body.value.probe, probe);
    assert.equal(back.body?.$case === "data" && back.body.value.loadId, loadId);
  }
});

test("run bytes go out as they are, not copied; framed output is the frame the generic path builds", () => {
  const data = Buffer.alloc(2 * 4096 + 100, 3);
  const runs: DataRun[] = [{ cpu: 1, firstSeq: 7, count: 3, pageSize: 4096, lastLength: 100, data }];
  const parts = encodeDataMessage(PROTOCOL_VERSION, "web1", 300n, { probe: "process", loadId: 9n, acked: [{ cpu: 1, seq: 6 }], runs }, true);
  assert.equal(parts.length, 2);
  assert.equal(parts[1], data, "the run's buffer itself");
  const framed = Buffer.concat(parts);
  assert.deepEqual(framed, encodeFrame(FrameKind.Data, generated("web1", 300n, "process", 9n, [{ cpu: 1, seq: 6 }], runs)));
  const back = decodeGuestMessage(framed.subarray(8));
  assert.equal(back.body?.$case === "data" && back.body.value.runs[0]?.count, 3);
});
