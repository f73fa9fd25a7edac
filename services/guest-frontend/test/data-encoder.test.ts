/** The hand-rolled data encoder must produce exactly the generated encoder's bytes. */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { decodeGuestMessage, encodeFrame, encodeGuestMessage, FrameKind, PROTOCOL_VERSION } from "@vesper/protocol";
import { encodeDataMessage } from "../src/data-encoder.js";

const page = fc.record({
  cpu: fc.nat({ max: 2 ** 32 - 1 }),
  seq: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  page: fc.uint8Array({ maxLength: 300 }),
});

const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
const cpuSeq = fc.record({ cpu: fc.nat({ max: 2 ** 32 - 1 }), seq: u64 });

test("encodeDataMessage matches GuestMessage.encode byte for byte", () => {
  fc.assert(
    fc.property(
      fc.string(),
      u64,
      fc.string(),
      fc.array(page, { maxLength: 4 }),
      u64,
      fc.array(cpuSeq, { maxLength: 3 }),
      (guestId, seq, probe, pages, loadId, acked) => {
        const ours = encodeDataMessage(PROTOCOL_VERSION, guestId, seq, probe, pages, false, loadId, acked);
        const theirs = encodeGuestMessage({
          version: PROTOCOL_VERSION,
          guestId,
          seq,
          body: { $case: "data", value: { probe, pages: pages.map((p) => ({ ...p, page: Buffer.from(p.page) })), loadId, acked } },
        });
        assert.deepEqual(new Uint8Array(ours), theirs);
      },
    ),
    { numRuns: 500 },
  );
});

test("framed output is the frame the generic path builds", () => {
  const pages = [{ cpu: 1, seq: 7n, page: Buffer.alloc(4096, 3) }, { cpu: 0, seq: 1n, page: Buffer.alloc(100, 1) }];
  const framed = encodeDataMessage(PROTOCOL_VERSION, "web1", 300n, "process", pages, true);
  const payload = encodeGuestMessage({ version: PROTOCOL_VERSION, guestId: "web1", seq: 300n, body: { $case: "data", value: { probe: "process", pages, loadId: 0n, acked: [] } } });
  assert.deepEqual(framed, encodeFrame(FrameKind.Data, payload));
  const back = decodeGuestMessage(framed.subarray(8));
  assert.equal(back.body?.$case, "data");
});
