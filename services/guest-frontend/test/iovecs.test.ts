/** How frames are cut into port writes: each write is one virtqueue round trip. */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { iovecs, MAX_WRITE } from "../src/transports/virtio-serial.js";

test("the same bytes, in full-size writes but the last, long parts sent as slices", () => {
  const part = fc.oneof(fc.nat({ max: 200 }), fc.nat({ max: 3 * MAX_WRITE })).map((n) => {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = (i * 7 + n) & 0xff;
    return b;
  });
  fc.assert(
    fc.property(fc.array(part, { maxLength: 5 }), fc.nat({ max: 4 * MAX_WRITE }), (parts, skipAny) => {
      const all = Buffer.concat(parts);
      const skip = Math.min(skipAny, all.length);
      const iov = iovecs(parts, skip);
      assert.deepEqual(Buffer.concat(iov), all.subarray(skip));
      iov.forEach((v, i) => {
        assert.ok(v.length > 0 && v.length <= MAX_WRITE);
        if (i < iov.length - 1) assert.equal(v.length, MAX_WRITE, "every write but the last is full");
      });
      assert.equal(iov.length, Math.ceil((all.length - skip) / MAX_WRITE));
    }),
    { numRuns: 300 },
  );
});

test("an urgent frame (header + one small page) is one write; a bulk frame copies at most one write's worth", () => {
  const head = Buffer.alloc(60, 1);
  const page = Buffer.alloc(80, 2);
  assert.equal(iovecs([head, page], 0).length, 1);
  const data = Buffer.alloc(4 * MAX_WRITE + 100, 3);
  const iov = iovecs([head, data], 0);
  assert.equal(iov.length, 5);
  const sliced = iov.filter((v) => v.buffer === data.buffer).length;
  assert.ok(sliced >= 3, `the data's own memory is sent for all but the joined write (${sliced} slices)`);
});
