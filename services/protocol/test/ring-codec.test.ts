import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { decodeGuestMessage, decodeHostMessage, encodeGuestMessage, FrameError, PROTOCOL_VERSION, ring } from "../src/index.js";

test("any bytes decode to a guest message or a MALFORMED FrameError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 4096 }), (bytes) => {
      try {
        const m = decodeGuestMessage(bytes);
        assert.equal(m.version, PROTOCOL_VERSION);
        assert.ok(m.body !== undefined);
      } catch (err) {
        assert.ok(err instanceof FrameError, String(err));
        assert.equal(err.code, "MALFORMED");
      }
    }),
    { numRuns: 2000 },
  );
});

test("a guest message of another protocol version is refused with a message that says so", () => {
  const bytes = ring.GuestMessage.encode({ version: 7 as ring.ProtocolVersion, guestId: "g", seq: 1n, body: { $case: "idle", value: {} } }).finish();
  assert.throws(() => decodeGuestMessage(bytes), /protocol version 7 not supported/);
});

test("guest messages round-trip", () => {
  const msg: ring.GuestMessage = {
    version: PROTOCOL_VERSION,
    guestId: "web1",
    seq: 42n,
    body: { $case: "data", value: { probe: "process", pages: [{ cpu: 1, seq: 7n, page: Buffer.alloc(4096, 3) }], loadId: 5n, acked: [{ cpu: 1, seq: 6n, events: 0n }], runs: [{ cpu: 1, firstSeq: 8n, count: 2, pageSize: 4096, lastLength: 100, data: Buffer.alloc(4196, 4) }], ackSoon: true, skips: [{ cpu: 1, from: 10n, to: 1034n }] } },
  };
  assert.deepEqual(decodeGuestMessage(encodeGuestMessage(msg)), msg);
});

test("host message bytes that are not a host message are refused", () => {
  assert.throws(() => decodeHostMessage(Buffer.from([0xff, 0xff, 0xff])), FrameError);
});
