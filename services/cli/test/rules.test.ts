/** `vesper rules`, `rules add`, `rules rm`: arguments, output and error lines, against a real gateway. */
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, beforeEach, describe, it } from "node:test";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { startGateway, type Gateway } from "@vesper/gateway";
import { api, createLogger, ErrorCode, VesperError } from "@vesper/protocol";
import { main } from "../src/main.js";
import { actionSummary, conditionSummary, formatRules, ruleToJson } from "../src/format.js";
import { fakeRules, privateNatsUrl, stopPrivateNats } from "../../gateway/test/helpers.js";

after(stopPrivateNats);

const log = createLogger("cli-rules-test", "silent");
const NOW = 1_700_000_100_000;

async function run(args: string[], stdin?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await main(args, {
    stdout: { write: (s) => ((stdout += s), true) },
    stderr: { write: (s) => ((stderr += s), true) },
    env: {},
    ...(stdin === undefined ? {} : { stdin: [Buffer.from(stdin)] }),
  });
  return { code, stdout, stderr };
}

const WEB = {
  service: "web",
  guest: "web1",
  when: [{ exit: { comm: "httpd", signal: { ne: 0 } } }, { listen_closed: { port: 80 } }, { vmm: "GUEST_PANICKED" }, { agent_lost: true }],
  actions: [{ pacemaker: { resource: "web", node: "node1" } }, { webhook: { url: "http://127.0.0.1:9099/hook" } }],
};

function info(o: Partial<api.RuleInfo> & { json: string }): api.RuleInfo {
  const r = JSON.parse(o.json) as { service: string; guest: string };
  return api.RuleInfo.fromPartial({ id: `${r.service}@${r.guest}`, service: r.service, guest: r.guest, source: api.RuleSource.RULE_SOURCE_API, ...o });
}

describe("rule summaries and the rules table", () => {
  it("summarises conditions and actions", () => {
    assert.equal(conditionSummary({ exit: { comm: "httpd", signal: { ne: 0 } } }), "exit{comm=httpd,signal!=0}");
    assert.equal(conditionSummary({ exit: {} }), "exit");
    assert.equal(conditionSummary({ vmm: "GUEST_PANICKED" }), "vmm:GUEST_PANICKED");
    assert.equal(conditionSummary({ agent_lost: true }), "agent_lost");
    assert.equal(
      conditionSummary({ event: { probe: "process", name: ["exit", "fork"], fields: { exit_code: { gt: 0, le: 9 }, comm: { in: ["a", "b c"] } } } }),
      'process/exit|fork{exit_code>0,exit_code<=9,comm in (a|"b c")}',
    );
    assert.equal(conditionSummary({ event: { probe: "oom" } }), "oom/*");
    assert.equal(conditionSummary({ weird: 1, two: 2 }), '{"weird":1,"two":2}');
    assert.equal(actionSummary({ pacemaker: { resource: "web", node: "node1" } }), "pacemaker:web@node1");
    assert.equal(actionSummary({ exec: { argv: ["/usr/local/bin/hook", "x"] } }), "exec:/usr/local/bin/hook");
    assert.equal(actionSummary({ webhook: { url: "http://h/x" } }), "webhook:http://h/x");
  });

  it("a table with source, probes loaded and last firing; inactive rules say why", () => {
    const rules = [
      info({ json: JSON.stringify({ service: "db", guest: "g1", when: [{ exit: { comm: "postgres" } }] }), source: api.RuleSource.RULE_SOURCE_FILE, probes: [{ probe: "process", loaded: true }] }),
      info({
        json: JSON.stringify(WEB),
        probes: [{ probe: "network", loaded: false }, { probe: "process", loaded: true }],
        lastFired: { firedUnixMs: BigInt(NOW - 30_000), reason: { pid: "42", signal: "9" } },
      }),
      info({ json: JSON.stringify({ service: "x", guest: "g2", when: [] }), inactiveReason: "not a usable rule: rule.when: expected a non-empty list of conditions" }),
    ];
    const lines = formatRules(rules, NOW).split("\n");
    assert.match(lines[0]!, /^ID\s+GUEST\s+SERVICE\s+WHEN\s+ACTIONS\s+SOURCE\s+PROBES\s+LAST FIRED$/);
    assert.match(lines[1]!, /^db@g1\s+g1\s+db\s+exit\{comm=postgres\}\s+-\s+file\s+process\s+never$/);
    assert.match(
      lines[2]!,
      /^web@web1\s+web1\s+web\s+exit\{comm=httpd,signal!=0\} \| listen_closed\{port=80\} \| vmm:GUEST_PANICKED \| agent_lost\s+pacemaker:web@node1, webhook:http:\/\/127\.0\.0\.1:9099\/hook\s+api\s+network\(not loaded\),process\s+30s ago$/,
    );
    assert.match(lines[3]!, /^x@g2\s+g2\s+x\s+-\s+-\s+api \(inactive\)\s+-\s+never$/);
    assert.equal(lines[4], "");
    assert.equal(lines[5], "x@g2 (api) is not in effect: not a usable rule: rule.when: expected a non-empty list of conditions");
    assert.match(formatRules([]), /^no watch rules: add one with `vesper rules add FILE`/);

    const j = ruleToJson(rules[1]!);
    assert.deepEqual(j, {
      id: "web@web1",
      guest: "web1",
      service: "web",
      source: "api",
      rule: WEB,
      probes: [{ probe: "network", loaded: false }, { probe: "process", loaded: true }],
      last_fired: { at: new Date(NOW - 30_000).toISOString(), reason: { pid: "42", signal: "9" } },
      inactive_reason: null,
    });
  });
});

describe("vesper rules against a gateway on real NATS", () => {
  let nc: NatsConnection;
  let gw: Gateway;
  let addr: string[];
  let svc: { stop(): Promise<void> } | undefined;
  const dir = mkdtempSync(path.join(tmpdir(), "vesper-cli-rules-"));
  /** What the fake rules service got: "check <id>" / "add <id>" / "replace <id>" / "rm <id>". */
  let calls: string[] = [];
  let stored: Map<string, string>;
  const fileRules = new Set(["db@g1"]);

  before(async () => {
    nc = await connect({ servers: await privateNatsUrl() });
    gw = await startGateway({ nc, listen: "127.0.0.1:0", log, rulesTimeoutMs: 2000 });
    addr = ["--addr", gw.address];
  });

  after(async () => {
    await svc?.stop();
    await gw.close();
    await nc.close();
  });

  beforeEach(() => {
    calls = [];
    stored = new Map();
  });

  const startService = async (): Promise<void> => {
    svc = await fakeRules(nc, {
      list: async () => ({ rules: [...stored.values()].map((json) => info({ json })), rulesFile: "" }),
      add: async (req) => {
        // A rough stand-in for the real parser: enough to see what the CLI does with its answers.
        const r = JSON.parse(req.json) as { service?: string; guest?: string; when?: unknown };
        if (JSON.stringify(r.when ?? "").includes("exitt")) throw new VesperError(ErrorCode.InvalidArgument, 'rule.when[0]: unknown condition "exitt"');
        const id = `${r.service}@${r.guest}`;
        if (fileRules.has(id)) throw new VesperError(ErrorCode.RuleInFile, `rule ${id} comes from the rules file /etc/vesper/rules.json: edit the rules file to change it`);
        const exists = stored.has(id);
        if (exists && !req.replace) throw new VesperError(ErrorCode.RuleAlreadyExists, `rule ${id} already exists: set replace to overwrite it`);
        calls.push(`${req.validateOnly ? "check" : req.replace ? "replace" : "add"} ${id}`);
        if (!req.validateOnly) stored.set(id, req.json);
        return { rule: info({ json: req.json, probes: [{ probe: "process", loaded: false }] }), replaced: exists };
      },
      remove: async (req) => {
        if (fileRules.has(req.id)) throw new VesperError(ErrorCode.RuleInFile, `rule ${req.id} comes from the rules file /etc/vesper/rules.json: edit the rules file (and restart vesper-host) to remove it`);
        if (!stored.delete(req.id)) throw new VesperError(ErrorCode.UnknownRule, `there is no rule ${req.id}`);
        calls.push(`rm ${req.id}`);
        return { id: req.id };
      },
    });
  };

  it("no rules service: says how to start it", async () => {
    const r = await run([...addr, "rules"]);
    assert.equal(r.code, 1);
    assert.equal(
      r.stderr,
      "vesper: the rules service is not answering on vesper.svc.rules.list: start it with vesper-host (it runs by default; with --services, include rules) (UNAVAILABLE)\n",
    );
  });

  it("rules add FILE: checks, then adds one rule; rules lists it; --json too", async () => {
    await startService();
    const file = path.join(dir, "web.json");
    writeFileSync(file, JSON.stringify(WEB));
    const r = await run([...addr, "rules", "add", file]);
    assert.equal(r.stderr, "");
    assert.equal(r.code, 0);
    assert.equal(r.stdout, "added rule web@web1 (needs probe groups process in guest web1; see `vesper rules`)\n");
    assert.deepEqual(calls, ["check web@web1", "add web@web1"]);
    assert.deepEqual(JSON.parse(stored.get("web@web1")!), WEB);

    const t = await run([...addr, "rules"]);
    assert.equal(t.code, 0);
    assert.match(t.stdout.split("\n")[1]!, /^web@web1\s+web1\s+web\s+exit\{comm=httpd,signal!=0\} \|/);
    const j = await run([...addr, "rules", "--json"]);
    assert.deepEqual(JSON.parse(j.stdout)[0].rule, WEB);
  });

  it("an existing rule: says to use --replace; --replace replaces it", async () => {
    stored.set("web@web1", JSON.stringify(WEB));
    const r = await run([...addr, "rules", "add", "-"], JSON.stringify(WEB));
    assert.equal(r.code, 1);
    assert.equal(
      r.stderr,
      "vesper: rule web@web1 already exists: replace it with `vesper rules add --replace FILE`, or remove it first with `vesper rules rm web@web1`\n",
    );
    assert.deepEqual(calls, []);
    const ok = await run([...addr, "rules", "add", "--replace", "-"], JSON.stringify({ ...WEB, cooldown_ms: 0 }));
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /^replaced rule web@web1 /);
    assert.deepEqual(calls, ["check web@web1", "replace web@web1"]);
    assert.equal(JSON.parse(stored.get("web@web1")!).cooldown_ms, 0);
  });

  it('{"rules": [...]} from stdin: every rule is checked before any is added', async () => {
    const a = { ...WEB, service: "a" };
    const b = { ...WEB, service: "b" };
    const ok = await run([...addr, "rules", "add", "-"], JSON.stringify({ rules: [a, b] }));
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual(calls, ["check a@web1", "check b@web1", "add a@web1", "add b@web1"]);
    assert.equal(ok.stdout.trimEnd().split("\n").length, 2);

    calls = [];
    const bad = await run([...addr, "rules", "add", "-"], JSON.stringify({ rules: [{ ...WEB, service: "c" }, { ...WEB, service: "d", when: [{ exitt: {} }] }] }));
    assert.equal(bad.code, 1);
    assert.equal(
      bad.stderr,
      'vesper: standard input rules[1] is not a valid rule: rule.when[0]: unknown condition "exitt" (INVALID_ARGUMENT); fix it and run the command again (nothing was added)\n',
    );
    assert.deepEqual(calls, ["check c@web1"], "nothing added");

    calls = [];
    const twice = await run([...addr, "rules", "add", "-"], JSON.stringify([{ ...WEB, service: "e" }, { ...WEB, service: "e" }]));
    assert.equal(twice.code, 1);
    assert.equal(twice.stderr, "vesper: standard input rules[0] and standard input rules[1] are both rule e@web1: one rule per service and guest\n");
    assert.deepEqual(calls, ["check e@web1", "check e@web1"]);
  });

  it("a rule of the rules file cannot be added over or removed", async () => {
    const add = await run([...addr, "rules", "add", "-"], JSON.stringify({ ...WEB, service: "db", guest: "g1" }));
    assert.equal(add.code, 1);
    assert.equal(add.stderr, "vesper: rule db@g1 comes from the rules file /etc/vesper/rules.json: edit the rules file to change it (RULE_IN_FILE)\n");
    const rm = await run([...addr, "rules", "rm", "db@g1"]);
    assert.equal(rm.code, 1);
    assert.match(rm.stderr, /^vesper: rule db@g1 comes from the rules file \/etc\/vesper\/rules\.json: edit the rules file \(and restart vesper-host\) to remove it/);
  });

  it("rules rm ID; an unknown id says where to look; a malformed one is refused by the gateway", async () => {
    stored.set("web@web1", JSON.stringify(WEB));
    const r = await run([...addr, "rules", "rm", "web@web1"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^removed rule web@web1 /);
    assert.deepEqual(calls, ["rm web@web1"]);
    const again = await run([...addr, "rules", "rm", "web@web1"]);
    assert.equal(again.code, 1);
    assert.equal(again.stderr, "vesper: rule web@web1 is not known: see `vesper rules`\n");
    const bad = await run([...addr, "rules", "rm", "web"]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^vesper: invalid rule id "web": use <service>@<guest>/);
  });

  it("bad input and usage: exit 1 for input, 2 for usage; nothing is sent", async () => {
    const missing = await run([...addr, "rules", "add", path.join(dir, "nope.json")]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^vesper: cannot read .*nope\.json: ENOENT.*give a JSON file with one rule or \{"rules": \[\.\.\.\]\}, or - for standard input\n$/);
    const notJson = await run([...addr, "rules", "add", "-"], "{nope");
    assert.equal(notJson.code, 1);
    assert.match(notJson.stderr, /^vesper: standard input is not valid JSON: /);
    const empty = await run([...addr, "rules", "add", "-"], '{"rules": []}');
    assert.equal(empty.code, 1);
    assert.match(empty.stderr, /^vesper: standard input has no rules/);
    const scalar = await run([...addr, "rules", "add", "-"], "42");
    assert.match(scalar.stderr, /^vesper: standard input: expected one rule object/);
    assert.equal((await run([...addr, "rules", "add"])).code, 2);
    assert.equal((await run([...addr, "rules", "frob"])).code, 2);
    assert.equal((await run([...addr, "rules", "rm"])).code, 2);
    assert.deepEqual(calls, []);
  });
});
