/**
 * The rules service against a real (private) NATS server with JetStream: an event published on the
 * events stream fires a rule, its exec and webhook actions run, the state file says why, and
 * rules/failure + rules/action events follow; a service the cluster stopped is not failed over.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { RulesService, writeServiceState } from "@vesper/failover";
import { ensureEventsStream } from "@vesper/host-common";
import { api, createLogger, subjects } from "@vesper/protocol";
import { jetstreamManager } from "@nats-io/jetstream";
import { NatsServer } from "../harness/nats-server.js";
import { waitFor } from "../harness/wait.js";

function exitEvent(guest: string, pid: number, signal: number): Uint8Array {
  const event = api.Event.fromPartial({
    guest,
    probe: "process",
    event: "vesper_process/exit",
    pid,
    comm: "httpd",
    receivedUnixNs: BigInt(Date.now()) * 1_000_000n,
    fields: {
      comm: { kind: { $case: "str", value: "httpd" } },
      signal: { kind: { $case: "int", value: BigInt(signal) } },
      exit_code: { kind: { $case: "int", value: 0n } },
    },
  });
  return api.WatchEventsResponse.encode({ kind: { $case: "event", value: event }, streamSeq: 0n }).finish();
}

describe("rules service", () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let svc: RulesService | undefined;
  let svcNc: NatsConnection | undefined;
  let hook: http.Server;
  const hookBodies: string[] = [];
  const dir = mkdtempSync(path.join(tmpdir(), "vesper-rules-"));
  const seen: api.Event[] = [];

  before(async () => {
    nats = await NatsServer.start();
    nc = await connect({ servers: nats.url });
    await ensureEventsStream(await jetstreamManager(nc));
    hook = http.createServer((req, res) => {
      let b = "";
      req.on("data", (d: Buffer) => (b += d.toString()));
      req.on("end", () => {
        hookBodies.push(b);
        res.end("thanks");
      });
    });
    await new Promise<void>((r) => hook.listen(0, "127.0.0.1", r));
    const port = (hook.address() as { port: number }).port;
    const rulesFile = path.join(dir, "rules.json");
    writeFileSync(
      rulesFile,
      JSON.stringify({
        rules: ["g1", "g2"].map((guest) => ({
          service: "web",
          guest,
          when: [{ exit: { comm: "httpd", signal: { ne: 0 } } }],
          actions: [
            { exec: { argv: ["sh", "-c", `cat > ${path.join(dir, `exec-${guest}.json`)}`] } },
            { webhook: { url: `http://127.0.0.1:${port}/hook` } },
          ],
        })),
      }),
    );
    const sub = nc.subscribe("vesper.events.*.rules");
    void (async () => {
      for await (const m of sub) {
        const r = api.WatchEventsResponse.decode(m.data);
        if (r.kind?.$case === "event") seen.push(r.kind.value);
      }
    })();
    svcNc = await connect({ servers: nats.url });
    svc = new RulesService({ nc: svcNc, log: createLogger("rules-test"), rulesFile, stateDir: dir, insmodRetryMs: 60_000, insmodTimeoutMs: 500 });
    await svc.start();
  });

  after(async () => {
    await svc?.stop();
    await svcNc?.close();
    await nc?.close();
    hook?.close();
    await nats?.stop();
  });

  it("fires on a killed httpd: actions run, state file and events say why", async () => {
    writeServiceState(dir, "g1", "web", "active");
    const js = jetstream(nc);
    await js.publish(subjects.events("g1", "process"), exitEvent("g1", 77, 0)); // normal exit of a forked child: no
    await js.publish(subjects.events("g1", "process"), exitEvent("g1", 78, 9));
    await waitFor("two rules/action events", () => seen.filter((e) => e.event === "rules/action").length >= 2, { timeoutMs: 20_000 });
    const failure = seen.find((e) => e.event === "rules/failure");
    assert.ok(failure);
    assert.equal(failure.pid, 78);
    assert.equal(failure.fields.trigger_probe?.kind?.$case === "str" && failure.fields.trigger_probe.kind.value, "process");
    assert.equal(failure.fields.signal?.kind?.$case === "int" && failure.fields.signal.kind.value, 9n);
    for (const a of seen.filter((e) => e.event === "rules/action")) {
      assert.equal(a.fields.ok?.kind?.$case === "int" && a.fields.ok.kind.value, 1n, JSON.stringify(a.fields, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v)));
    }
    const state = JSON.parse(readFileSync(path.join(dir, "g1.web.state"), "utf8")) as { state: string; reason: { pid: number; signal: number } };
    assert.equal(state.state, "failed");
    assert.equal(state.reason.pid, 78);
    assert.equal(state.reason.signal, 9);
    assert.match(readFileSync(path.join(dir, "exec-g1.json"), "utf8"), /"pid":78/);
    assert.equal(hookBodies.length, 1);
    assert.match(hookBodies[0]!, /"guest":"g1"/);
  });

  it("does not fail over a service the cluster stopped", async () => {
    writeServiceState(dir, "g2", "web", "stopped");
    await jetstream(nc).publish(subjects.events("g2", "process"), exitEvent("g2", 90, 15));
    await waitFor("a rules/suppressed event", () => seen.some((e) => e.event === "rules/suppressed" && e.guest === "g2"), { timeoutMs: 20_000 });
    assert.equal(seen.filter((e) => e.guest === "g2" && e.event === "rules/action").length, 0);
    assert.equal(svc!.stats.fired, 1);
  });
});
