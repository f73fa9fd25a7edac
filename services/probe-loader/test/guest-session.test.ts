/** The host end of the ring: commands only ever answer an idle request. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { createLogger, ring } from "@vesper/protocol";
import { GuestSession } from "../src/guest-session.js";

function session(idleHoldMs = 30) {
  const sent: Array<{ replyTo: bigint; command: ring.Command }> = [];
  const s = new GuestSession("g1", { idleHoldMs, offlineAfterMs: 10_000, log: createLogger("t", "silent"), send: (replyTo, command) => sent.push({ replyTo, command }) });
  s.reset({ kernelRelease: "", bootId: "", capabilities: undefined, loadedProbes: [], agentVersion: "", monoNs: 0n });
  return { s, sent };
}

const ok = (commandId: bigint): ring.Result => ({ commandId, code: ring.ResultCode.RESULT_CODE_OK, message: "", kernelLog: [] });

test("a queued command waits for the guest's idle request, then answers exactly it", async () => {
  const { s, sent } = session(10_000);
  const p = s.run({ $case: "unload", value: { probe: "x" } }, 5_000);
  assert.equal(sent.length, 0, "nothing is sent unasked");
  s.onIdle(7n);
  assert.equal(sent.length, 1);
  assert.equal(sent[0]!.replyTo, 7n);
  const second = s.run({ $case: "unload", value: { probe: "y" } }, 5_000);
  assert.equal(sent.length, 1, "the idle request is used up: the next command waits");
  assert.ok(s.onResult(ok(sent[0]!.command.commandId)));
  assert.equal((await p).code, ring.ResultCode.RESULT_CODE_OK);
  s.onIdle(9n);
  assert.equal(sent[1]!.replyTo, 9n);
  assert.ok(s.onResult(ok(sent[1]!.command.commandId)));
  await second;
  assert.equal(s.onResult(ok(999n)), false, "a result for no command is refused");
  s.close("done");
});

test("an idle request with nothing to do is held, then answered with a ping (the heartbeat)", async () => {
  const { s, sent } = session(30);
  s.onIdle(3n);
  assert.equal(sent.length, 0);
  const deadline = Date.now() + 5_000;
  while (sent.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  assert.equal(sent[0]?.command.kind?.$case, "ping");
  assert.equal(sent[0]?.replyTo, 3n);
  s.onResult({ ...ok(sent[0]!.command.commandId), detail: { $case: "pong", value: { monoNs: 123n } } });
  await new Promise((r) => setImmediate(r));
  assert.ok(s.lastRttMs !== undefined && s.clockOffsetNs !== undefined);
  s.close("done");
});

test("a command the guest never answers times out; a new Hello voids outstanding commands", async () => {
  const { s } = session(10_000);
  s.onIdle(1n);
  await assert.rejects(s.run({ $case: "unload", value: { probe: "x" } }, 30), /did not answer unload within 30 ms/);
  s.onIdle(2n);
  const p = s.run({ $case: "unload", value: { probe: "y" } }, 5_000);
  s.reset({ kernelRelease: "", bootId: "", capabilities: undefined, loadedProbes: [], agentVersion: "", monoNs: 0n });
  await assert.rejects(p, /restarted its ring/);
  s.close("done");
});
