/**
 * The QMP client against a fake QMP server on a unix socket: greeting,
 * qmp_capabilities, events as JSON lines (split across writes, CRLF), the close
 * after a handshake, and a monitor that never greets (held by another client).
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { flattenQmpData, QmpClient, qmpToEvent, type QmpEvent } from "../src/index.js";

const dir = mkdtempSync(join(tmpdir(), "vesper-qmp-"));
after(() => rmSync(dir, { recursive: true, force: true }));

interface Fake {
  server: Server;
  path: string;
  conn: Promise<Socket>;
  commands: string[];
}

function fakeQmp(name: string, greet = true): Promise<Fake> {
  const path = join(dir, `${name}.qmp`);
  const commands: string[] = [];
  let onConn: (s: Socket) => void = () => undefined;
  const conn = new Promise<Socket>((r) => (onConn = r));
  const server = createServer((s) => {
    if (greet) s.write('{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}\r\n');
    let buf = "";
    s.on("data", (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const cmd = (JSON.parse(line) as { execute: string }).execute;
        commands.push(cmd);
        s.write(cmd === "qmp_capabilities" ? '{"return": {}}\r\n' : '{"error": {"class": "CommandNotFound", "desc": "nope"}}\r\n');
      }
    });
    s.on("error", () => undefined);
    onConn(s);
  });
  return new Promise((resolve) => server.listen(path, () => resolve({ server, path, conn, commands })));
}

function until<T>(what: string, get: () => T | undefined, ms = 5_000): Promise<T> {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      const v = get();
      if (v !== undefined) return resolve(v);
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 5);
    };
    tick();
  });
}

test("handshake, events split across writes, then the close after the handshake is reported", async () => {
  const f = await fakeQmp("g1");
  const events: QmpEvent[] = [];
  let closed: { ready: boolean; reason: string } | undefined;
  let ready = false;
  const c = new QmpClient(f.path, { onEvent: (e) => events.push(e), onClose: (i) => (closed = i), onReady: () => (ready = true) });
  c.start();
  const s = await f.conn;
  await until("ready", () => (ready ? true : undefined));
  assert.deepEqual(f.commands, ["qmp_capabilities"]);
  s.write('{"timestamp": {"seconds": 1700000000, "microseconds": 123456}, "event": "GUEST_PA');
  s.write('NICKED", "data": {"action": "pause", "info": {"type": "hyper-v", "arg1": 5}}}\r\n{"timestamp": {"seconds": 1700000001, "microseconds": 7}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-panic"}}\r\n');
  s.write('{"timestamp": {"seconds": 1700000002, "microseconds": 0}, "event": "STOP"}\n');
  await until("3 events", () => (events.length === 3 ? true : undefined));
  assert.equal(events[0]!.event, "GUEST_PANICKED");
  assert.deepEqual(events[0]!.data, { action: "pause", info: { type: "hyper-v", arg1: 5 } });
  assert.deepEqual(events[0]!.timestamp, { seconds: 1700000000, microseconds: 123456 });
  assert.equal(events[1]!.event, "SHUTDOWN");
  assert.deepEqual(events[2]!.data, {});
  await assert.rejects(c.execute("no-such-command"), /CommandNotFound/);
  s.destroy();
  await until("close", () => closed);
  assert.equal(closed!.ready, true);
  f.server.close();
});

test("a monitor that never greets (another client holds it) is given up with a reason", async () => {
  const f = await fakeQmp("g2", false);
  let closed: { ready: boolean; reason: string } | undefined;
  const c = new QmpClient(f.path, { onEvent: () => undefined, onClose: (i) => (closed = i) }, { greetingTimeoutMs: 200 });
  c.start();
  await until("close", () => closed);
  assert.equal(closed!.ready, false);
  assert.match(closed!.reason, /no QMP greeting/);
  f.server.close();
});

test("a missing socket is reported as a close before the handshake; stop() reports nothing", async () => {
  let closed: { ready: boolean; reason: string } | undefined;
  new QmpClient(join(dir, "absent.qmp"), { onEvent: () => undefined, onClose: (i) => (closed = i) }).start();
  await until("close", () => closed);
  assert.equal(closed!.ready, false);

  const f = await fakeQmp("g3");
  let closes = 0;
  const c = new QmpClient(f.path, { onEvent: () => undefined, onClose: () => closes++ });
  c.start();
  await f.conn;
  await until("ready", () => (c.isReady ? true : undefined));
  c.stop();
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(closes, 0);
  f.server.close();
});

test("QMP events become vmm events: qmp/<EVENT>, flattened fields, QEMU's timestamp in ns", () => {
  assert.deepEqual(flattenQmpData({ a: 1, b: { c: "x", d: { e: true } }, f: [1, 2], g: null }), { a: 1, "b.c": "x", "b.d.e": true, f: "[1,2]", g: "" });
  const ev = qmpToEvent("web1", { event: "WATCHDOG", data: { action: "reset", n: 2.5 }, timestamp: { seconds: 10, microseconds: 5 } }, 99n);
  assert.equal(ev.guest, "web1");
  assert.equal(ev.probe, "vmm");
  assert.equal(ev.event, "qmp/WATCHDOG");
  assert.equal(ev.ts, 10_000_005_000n);
  assert.equal(ev.receivedUnixNs, 99n);
  assert.deepEqual(ev.fields.action, { kind: { $case: "str", value: "reset" } });
  assert.deepEqual(ev.fields.n, { kind: { $case: "str", value: "2.5" } });
});
