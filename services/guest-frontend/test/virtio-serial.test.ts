/**
 * The port transport's read loop ends at close() although its read is still blocked in the
 * kernel: closing the fd does not end a read(2) in progress (virtio_console waits for the
 * host's next bytes), and a frontend stopped with SIGTERM had hung on it. A FIFO with no
 * writer blocks a read the same way.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { pino } from "pino";
import { VirtioSerialTransport } from "../src/transports/virtio-serial.js";

test("close() ends incoming() while its read is blocked in the kernel", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "vesper-port-"));
  const fifo = path.join(dir, "port");
  execFileSync("mkfifo", [fifo]);
  try {
    const t = await VirtioSerialTransport.open(fifo, pino({ level: "silent" }), 1 << 20);
    const next = t.incoming()[Symbol.asyncIterator]().next(); // issues the read, which blocks: nothing is written
    await t.close();
    const r = await Promise.race([next, sleep(10_000).then(() => "still waiting for the read")]);
    assert.deepEqual(r, { value: undefined, done: true });
  } finally {
    // The abandoned read still holds a pool thread: one byte lets it return, so the test process can exit.
    writeFileSync(fifo, "x");
    rmSync(dir, { recursive: true, force: true });
  }
});
