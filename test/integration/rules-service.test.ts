/**
 * The rules service against a real (private) NATS server with JetStream: an event published on the
 * events stream fires a rule, its exec and webhook actions run, the state file says why, and
 * rules/failure + rules/action events follow; a service the cluster stopped is not failed over.
 *
 * Then rules through the gRPC API, with the gateway and the rules service as real vesper-host
 * processes: added rules fire, are listed with source api, are refused with the right codes,
 * survive restarts of the rules service (and a default vesper-host without --rules picks them
 * up), take effect when written to the KV bucket directly, and stop firing once removed.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { status } from "@grpc/grpc-js";
import { ApiError, VesperApiClient } from "@vesper/cli";
import { RULES_BUCKET, RulesService, writeServiceState } from "@vesper/failover";
import { ensureEventsStream } from "@vesper/host-common";
import { api, createLogger, ErrorCode, EVENTS_STREAM, subjects } from "@vesper/protocol";
import { jetstreamManager } from "@nats-io/jetstream";
import { HostProcess } from "../harness/host-process.js";
import { NatsServer } from "../harness/nats-server.js";
import { PrivateNats } from "../harness/private-nats.js";
import { waitFor } from "../harness/wait.js";

function exitEvent(guest: string, pid: number, signal: number, comm = "httpd"): Uint8Array {
  const event = api.Event.fromPartial({
    guest,
    probe: "process",
    event: "vesper_process/exit",
    pid,
    comm,
    receivedUnixNs: BigInt(Date.now()) * 1_000_000n,
    fields: {
      comm: { kind: { $case: "str", value: comm } },
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

/** The webhook bodies the rules service posted (FailureNotice), in arrival order. */
interface Notice {
  service: string;
  guest: string;
  rule: string;
  reason: { pid?: number; signal?: number; comm?: string };
}

async function refusal(p: Promise<unknown>): Promise<ApiError> {
  return p.then(
    () => assert.fail("the call should have failed"),
    (e: unknown) => {
      assert.ok(e instanceof ApiError, String(e));
      return e;
    },
  );
}

describe("rules through the gRPC API, with real host services", () => {
  let nats: PrivateNats;
  let nc: NatsConnection;
  let gateway: HostProcess | undefined;
  let rulesHost: HostProcess | undefined;
  let client: VesperApiClient;
  let hook: http.Server;
  let hookUrl: string;
  const notices: Notice[] = [];
  const failures: api.Event[] = [];
  const runDir = mkdtempSync(path.join(tmpdir(), "vesper-it-rules-api-"));
  const rulesFile = path.join(runDir, "rules.json");

  const web = (extra: Record<string, unknown> = {}) => ({
    service: "web",
    guest: "g1",
    when: [{ exit: { comm: "httpd", signal: { ne: 0 } } }],
    actions: [{ webhook: { url: hookUrl } }],
    cooldown_ms: 0,
    ...extra,
  });
  const startRules = async (args: string[]): Promise<HostProcess> =>
    HostProcess.start({ runDir, ...(args.includes("--all") ? {} : { services: ["rules"] }), extraArgs: ["--nats", nats.hostPort, ...args.filter((a) => a !== "--all")] });
  const publish = async (guest: string, pid: number, signal = 9): Promise<void> => {
    await jetstream(nc).publish(subjects.events(guest, "process"), exitEvent(guest, pid, signal));
  };
  const noticeFor = (pid: number) => waitFor(`the webhook for pid ${pid}`, () => notices.find((n) => n.reason.pid === pid), { timeoutMs: 20_000 });
  const byId = async (id: string) => (await client.listRules()).rules.find((r) => r.id === id);

  before(async () => {
    nats = await PrivateNats.start("# rules API test\n");
    nc = await connect({ servers: nats.hostPort, name: "rules-api-test" });
    await ensureEventsStream(await jetstreamManager(nc));
    hook = http.createServer((req, res) => {
      let b = "";
      req.on("data", (d: Buffer) => (b += d.toString()));
      req.on("end", () => {
        notices.push(JSON.parse(b) as Notice);
        res.end("ok");
      });
    });
    await new Promise<void>((r) => hook.listen(0, "127.0.0.1", r));
    hookUrl = `http://127.0.0.1:${(hook.address() as { port: number }).port}/hook`;
    // A file rule, to see both sources side by side (it watches postgres, not httpd).
    writeFileSync(rulesFile, JSON.stringify({ rules: [{ service: "db", guest: "g1", when: [{ exit: { comm: "postgres" } }], actions: [{ webhook: { url: hookUrl } }] }] }));
    const sub = nc.subscribe("vesper.events.*.rules");
    void (async () => {
      for await (const m of sub) {
        const r = api.WatchEventsResponse.decode(m.data);
        if (r.kind?.$case === "event" && r.kind.value.event === "rules/failure") failures.push(r.kind.value);
      }
    })();
    gateway = await HostProcess.start({ runDir, services: ["gateway"], extraArgs: ["--nats", nats.hostPort] });
    client = new VesperApiClient(gateway.address!, { timeoutMs: 15_000 });
  });

  after(async () => {
    client?.close();
    await rulesHost?.stop();
    await gateway?.stop();
    hook?.close();
    await nc?.close();
    await nats?.stop();
  });

  it("without a rules service the gateway answers UNAVAILABLE and says how to start it", async () => {
    const e = await refusal(client.listRules());
    assert.equal(e.grpcCode, status.UNAVAILABLE);
    assert.equal(e.fromGateway, true);
    assert.match(e.message, /the rules service is not answering on vesper\.svc\.rules\.list: start it with vesper-host/);
  });

  it("a rule added through gRPC is listed with source api and fires on a matching event", async () => {
    rulesHost = await startRules(["--rules", rulesFile]);
    const added = await client.addRule({ json: JSON.stringify(web()) });
    assert.equal(added.replaced, false);
    assert.equal(added.rule?.id, "web@g1");
    assert.equal(added.rule?.source, api.RuleSource.RULE_SOURCE_API);
    // no probe-loader here: the rules service cannot load `process` into g1 (yet)
    assert.deepEqual(added.rule?.probes, [{ probe: "process", loaded: false }]);

    const list = await client.listRules();
    assert.equal(list.rulesFile, rulesFile);
    assert.deepEqual(list.rules.map((r) => [r.id, r.source]), [["db@g1", api.RuleSource.RULE_SOURCE_FILE], ["web@g1", api.RuleSource.RULE_SOURCE_API]]);
    const mine = list.rules[1]!;
    assert.deepEqual(JSON.parse(mine.json), web());
    assert.equal(mine.lastFired, undefined);
    assert.equal(mine.inactiveReason, "");

    await publish("g1", 100, 0); // a normal exit: no
    await publish("g1", 101, 9);
    const n = await noticeFor(101);
    assert.equal(n.rule, "web@g1");
    assert.equal(n.reason.signal, 9);
    assert.equal(notices.some((x) => x.reason.pid === 100), false);
    const f = await waitFor("rules/failure for pid 101", () => failures.find((e) => e.pid === 101));
    assert.equal(f.fields.rule?.kind?.$case === "str" && f.fields.rule.kind.value, "web@g1");
    const fired = await byId("web@g1");
    assert.equal(fired?.lastFired?.reason.pid, "101");
    assert.ok(Number(fired!.lastFired!.firedUnixMs) > Date.now() - 60_000);
  });

  it("refuses duplicates, bad rules, file rules and commands with the right codes; replace replaces", async () => {
    const dup = await refusal(client.addRule({ json: JSON.stringify(web()) }));
    assert.equal(dup.grpcCode, status.ALREADY_EXISTS);
    assert.equal(dup.code, ErrorCode.RuleAlreadyExists);

    const replaced = await client.addRule({ json: JSON.stringify(web({ cooldown_ms: 1 })), replace: true });
    assert.equal(replaced.replaced, true);
    assert.equal(JSON.parse((await byId("web@g1"))!.json).cooldown_ms, 1);
    await client.addRule({ json: JSON.stringify(web()), replace: true });

    const bad = await refusal(client.addRule({ json: JSON.stringify(web({ when: [{ exitt: {} }] })) }));
    assert.equal(bad.grpcCode, status.INVALID_ARGUMENT);
    assert.match(bad.message, /^rule\.when\[0\]: unknown condition "exitt"/);
    const notJson = await refusal(client.addRule({ json: "{" }));
    assert.equal(notJson.grpcCode, status.INVALID_ARGUMENT);
    assert.match(notJson.message, /^rule is not valid JSON/);

    const exec = await refusal(client.addRule({ json: JSON.stringify(web({ service: "x", actions: [{ exec: { argv: ["touch", path.join(runDir, "pwned")] } }] })) }));
    assert.equal(exec.grpcCode, status.FAILED_PRECONDITION);
    assert.equal(exec.code, ErrorCode.RuleNotAllowed);
    assert.match(exec.message, /--rules-allow-exec/);

    const overFile = await refusal(client.addRule({ json: JSON.stringify(web({ service: "db" })), replace: true }));
    assert.equal(overFile.grpcCode, status.FAILED_PRECONDITION);
    assert.equal(overFile.code, ErrorCode.RuleInFile);
    const rmFile = await refusal(client.removeRule("db@g1"));
    assert.equal(rmFile.grpcCode, status.FAILED_PRECONDITION);
    assert.match(rmFile.message, /comes from the rules file .*rules\.json: edit the rules file/);
    const unknown = await refusal(client.removeRule("nope@g1"));
    assert.equal(unknown.grpcCode, status.NOT_FOUND);
    assert.equal(unknown.code, ErrorCode.UnknownRule);

    // the refused ones left nothing behind
    assert.deepEqual((await client.listRules()).rules.map((r) => r.id), ["db@g1", "web@g1"]);
  });

  it("a rule written to the KV bucket directly takes effect at once (the service watches it)", async () => {
    const kv = await new Kvm(nc).open(RULES_BUCKET);
    await kv.put("g2.api", JSON.stringify({ service: "api", guest: "g2", when: [{ exit: {} }], actions: [{ webhook: { url: hookUrl } }], cooldown_ms: 0 }));
    await waitFor("api@g2 in the list", async () => (await byId("api@g2"))?.source === api.RuleSource.RULE_SOURCE_API, { timeoutMs: 10_000 });
    await publish("g2", 200);
    assert.equal((await noticeFor(200)).rule, "api@g2");
  });

  it("API rules survive a restart of the rules service, and a default vesper-host (no --rules) runs them", async () => {
    await rulesHost!.stop();
    rulesHost = undefined;
    assert.equal((await refusal(client.listRules())).grpcCode, status.UNAVAILABLE);
    // While it is down: the durable consumer keeps this for the restarted service.
    await publish("g1", 102);
    rulesHost = await startRules(["--all"]);
    assert.equal((await noticeFor(102)).rule, "web@g1");
    const list = await client.listRules();
    assert.equal(list.rulesFile, "");
    assert.deepEqual(list.rules.map((r) => [r.id, r.source]), [["api@g2", api.RuleSource.RULE_SOURCE_API], ["web@g1", api.RuleSource.RULE_SOURCE_API]]);
    await publish("g1", 103);
    assert.equal((await noticeFor(103)).rule, "web@g1");
  });

  it("a removed rule is no longer listed and no longer fires; without rules no event is consumed", async () => {
    assert.deepEqual(await client.removeRule("web@g1"), { id: "web@g1" });
    assert.equal(await byId("web@g1"), undefined);
    await publish("g1", 104); // web@g1 would have fired
    await publish("g2", 201); // api@g2 fires: by then 104 went past the rules
    assert.equal((await noticeFor(201)).rule, "api@g2");
    assert.equal(notices.some((n) => n.reason.pid === 104), false);

    await client.removeRule("api@g2");
    assert.deepEqual((await client.listRules()).rules, []);
    const jsm = await jetstreamManager(nc);
    await waitFor("the rules consumer to stop pulling", async () => (await jsm.consumers.info(EVENTS_STREAM, "vesper-rules")).num_waiting === 0, { timeoutMs: 10_000 });
    await publish("g1", 105);
    await new Promise((r) => setTimeout(r, 500));
    assert.ok((await jsm.consumers.info(EVENTS_STREAM, "vesper-rules")).num_pending >= 1, "events wait, unread, while there are no rules");

    // A rule added now acts on events from now on, not on the backlog from when there were none.
    await client.addRule({ json: JSON.stringify(web()) });
    await publish("g1", 106);
    assert.equal((await noticeFor(106)).rule, "web@g1");
    assert.equal(notices.some((n) => n.reason.pid === 105), false);
  });
});
