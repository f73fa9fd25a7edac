import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { api } from "@vesper/protocol";
import { actionArgv, failureReason, matchRule, parseRules, predicateHolds, probesToLoad, runAction } from "../src/index.js";
import { readServiceState, writeServiceState } from "../src/state-file.js";

const RULES = JSON.stringify({
  rules: [
    {
      service: "web",
      guest: "web1",
      when: [
        { exit: { comm: "httpd", signal: { ne: 0 } } },
        { listen_closed: { port: 80 } },
        { vmm: "GUEST_PANICKED" },
        { agent_lost: true },
      ],
      actions: [{ pacemaker: { resource: "web", node: "node1", prefix: ["nsenter", "-t", "1", "--"] } }, { exec: { argv: ["true"] } }],
    },
  ],
});

function ev(p: Partial<api.Event> & { f?: Record<string, number | string> }): api.Event {
  const fields: Record<string, api.FieldValue> = {};
  for (const [k, v] of Object.entries(p.f ?? {})) fields[k] = typeof v === "number" ? { kind: { $case: "int", value: BigInt(v) } } : { kind: { $case: "str", value: v } };
  return api.Event.fromPartial({ guest: "web1", probe: "process", event: "vesper_process/exit", pid: 42, comm: "httpd", ...p, fields });
}

describe("watch rules", () => {
  const [rule] = parseRules(RULES);
  it("parses shorthands into generic conditions and knows which probes to load", () => {
    assert.equal(rule!.id, "web@web1");
    assert.deepEqual([...probesToLoad([rule!]).get("web1")!].sort(), ["network", "process"]);
    assert.deepEqual(actionArgv(rule!.actions[0] as never), ["nsenter", "-t", "1", "--", "crm_resource", "--fail", "--resource", "web", "--node", "node1"]);
  });
  it("matches a killed httpd but not a normal exit of a forked child or another guest", () => {
    assert.ok(matchRule(rule!, ev({ f: { comm: "httpd", signal: 9, exit_code: 0 } })));
    assert.equal(matchRule(rule!, ev({ f: { comm: "httpd", signal: 0, exit_code: 0 } })), undefined);
    assert.equal(matchRule(rule!, ev({ comm: "sh", f: { comm: "sh", signal: 9 } })), undefined);
    assert.equal(matchRule(rule!, ev({ guest: "web2", f: { comm: "httpd", signal: 9 } })), undefined);
    assert.equal(matchRule(rule!, ev({ event: "sched/sched_process_exit", f: { comm: "httpd" } })), undefined);
  });
  it("matches other probe groups by event name and fields", () => {
    assert.ok(matchRule(rule!, ev({ probe: "network", event: "vesper_network/listen_closed", f: { port: 80 } })));
    assert.equal(matchRule(rule!, ev({ probe: "network", event: "vesper_network/listen_closed", f: { port: 81 } })), undefined);
    assert.ok(matchRule(rule!, ev({ probe: "vmm", event: "vmm/guest_panicked" })));
    assert.ok(matchRule(rule!, ev({ probe: "agent", event: "agent/agent_lost" })));
  });
  it("says why", () => {
    const e = ev({ f: { comm: "httpd", signal: 9, exit_code: 0 } });
    const r = failureReason(e, matchRule(rule!, e)!);
    assert.equal(r.pid, 42);
    assert.equal(r.signal, 9);
    assert.equal(r.comm, "httpd");
    assert.equal(r.probe, "process");
  });
  it("predicates", () => {
    assert.ok(predicateHolds(3, { gt: 2, lt: 4 }));
    assert.ok(!predicateHolds(3, { in: [1, 2] }));
    assert.ok(predicateHolds("a", { not_in: ["b"] }));
    assert.ok(!predicateHolds(undefined, 1));
  });
  it("rejects bad rules with the place of the mistake", () => {
    assert.throws(() => parseRules('{"rules":[{"service":"w","guest":"g","when":[{"exitt":{}}]}]}'), /rules\[0\]\.when\[0\].*exitt/);
    assert.throws(() => parseRules('{"rules":[{"service":"w","guest":"g","when":[{"exit":{"signal":{"gtt":1}}}]}]}'), /gtt/);
    assert.throws(() => parseRules('{"rules":[{"service":"w","guest":"g","when":[{"exit":{}}],"actions":[{"webhook":{"url":"ftp://x"}}]}]}'), /http/);
    assert.throws(() => parseRules("nope"), /not valid JSON/);
  });
  it("state files and the exec action", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "vesper-state-"));
    assert.equal(readServiceState(dir, "web1", "web"), "none");
    writeServiceState(dir, "web1", "web", "failed", { reason: { pid: 1 } });
    assert.equal(readServiceState(dir, "web1", "web"), "failed");
    const out = path.join(dir, "out");
    const o = await runAction({ kind: "exec", argv: ["sh", "-c", `cat > ${out}; echo "$VESPER_SERVICE" >> ${out}`], timeoutMs: 5000 }, rule!, {
      service: "web", guest: "web1", rule: "web@web1", reason: { pid: 1 }, event_unix_ns: "0", fired_unix_ms: 0,
    });
    assert.ok(o.ok, o.detail);
    assert.match(readFileSync(out, "utf8"), /"reason":\{"pid":1\}[\s\S]*web/);
    const bad = await runAction({ kind: "exec", argv: ["sh", "-c", "exit 3"], timeoutMs: 5000 }, rule!, {
      service: "web", guest: "web1", rule: "web@web1", reason: {}, event_unix_ns: "0", fired_unix_ms: 0,
    });
    assert.equal(bad.ok, false);
    assert.match(bad.detail, /exit status 3/);
  });
});

describe("failure reasons", () => {
  it("keeps 64-bit fields exact", () => {
    const [rule] = parseRules(RULES);
    const e = api.Event.fromPartial({
      guest: "web1", probe: "network", event: "vesper_network/listen_close", pid: 7, comm: "httpd",
      fields: { port: { kind: { $case: "int", value: 80n } }, __probe_ip: { kind: { $case: "uint", value: 18446744072474680001n } } },
    });
    const r = failureReason(e, matchRule(rule!, e)!);
    assert.equal(r.port, 80);
    assert.equal(r.__probe_ip, `0x${(18446744072474680001n).toString(16)}`);
  });
});
