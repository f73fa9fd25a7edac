import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { ErrorCode, VesperError } from "@vesper/protocol";
import { checkApiRule, commandsOf, parseRules, parseRuleText, RuleSet, ruleIdOfKey, ruleKey } from "../src/index.js";

const web = (extra: Record<string, unknown> = {}): string =>
  JSON.stringify({ service: "web", guest: "web1", when: [{ exit: { comm: "httpd" } }], ...extra });

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof VesperError, String(err));
    return `${err.code}: ${err.message}`;
  }
  return assert.fail("should have thrown");
}

describe("one rule from the API", () => {
  it("parses one rule object and keeps it as written", () => {
    const r = parseRuleText(web({ cooldown_ms: 0 }));
    assert.equal(r.id, "web@web1");
    assert.equal(r.cooldownMs, 0);
    assert.deepEqual(JSON.parse(r.json), JSON.parse(web({ cooldown_ms: 0 })));
  });

  it("refuses documents, bad JSON and bad rules with the parser's message", () => {
    assert.match(code(() => parseRuleText(`{"rules":[${web()}]}`)), /^INVALID_ARGUMENT: rule: expected one rule object, not a list/);
    assert.match(code(() => parseRuleText(`[${web()}]`)), /not a list/);
    assert.match(code(() => parseRuleText("{")), /^INVALID_ARGUMENT: rule is not valid JSON/);
    assert.match(code(() => parseRuleText(web({ when: [{ exitt: {} }] }))), /^INVALID_ARGUMENT: rule\.when\[0\]: unknown condition "exitt"/);
    assert.match(code(() => parseRuleText(`{"service":"web","guest":"web1","when":[],"pad":"${"x".repeat(70_000)}"}`)), /^TOO_LARGE/);
  });

  it("refuses pacemaker names that would read as options, in files too", () => {
    const doc = (resource: string) => JSON.stringify({ rules: [{ service: "w", guest: "g", when: [{ exit: {} }], actions: [{ pacemaker: { resource, node: "n1" } }] }] });
    assert.throws(() => parseRules(doc("--cleanup")), /pacemaker\.resource: must not start with "-"/);
    assert.equal(parseRules(doc("web")).length, 1);
  });
});

describe("what API rules may do", () => {
  const rule = (actions: unknown[]) => parseRuleText(web({ actions }));
  it("refuses rules that run commands unless the host allows it", () => {
    const exec = rule([{ webhook: { url: "http://127.0.0.1/h" } }, { exec: { argv: ["/bin/sh", "-c", "id"] } }]);
    assert.deepEqual(commandsOf(exec), ["actions[1] (exec) runs /bin/sh"]);
    assert.match(code(() => checkApiRule(exec, { allowExec: false })), /^RULE_NOT_ALLOWED: rule web@web1: actions\[1\] \(exec\) runs \/bin\/sh.*--rules-allow-exec/);
    checkApiRule(exec, { allowExec: true });
    const prefixed = rule([{ pacemaker: { resource: "web", node: "n1", prefix: ["nsenter", "-t", "1", "--"] } }]);
    assert.deepEqual(commandsOf(prefixed), ["actions[0] (pacemaker) runs nsenter"]);
    assert.deepEqual(commandsOf(rule([{ pacemaker: { resource: "web", node: "n1", crm_resource: "/tmp/x" } }])), ["actions[0] (pacemaker) runs /tmp/x"]);
    // plain crm_resource and webhooks are fine
    checkApiRule(rule([{ pacemaker: { resource: "web", node: "n1" } }, { webhook: { url: "http://127.0.0.1/h" } }]), { allowExec: false });
  });
});

describe("KV keys of rules", () => {
  it("maps ids to <guest>.<service> and back; refuses what is not a rule key", () => {
    assert.equal(ruleKey("web@web1"), "web1.web");
    assert.equal(ruleIdOfKey("web1.web"), "web@web1");
    assert.equal(ruleIdOfKey("web1"), undefined);
    assert.equal(ruleIdOfKey("a.b.c"), undefined);
    assert.throws(() => ruleKey("web"), /invalid rule id/);
  });
});

describe("the rule set: file rules merged with API rules", () => {
  const file = parseRules(JSON.stringify({ rules: [{ service: "db", guest: "g1", when: [{ exit: {} }] }] }), "rules.json");

  it("puts file and API rules in effect, and drops an API rule on its deletion", () => {
    const s = new RuleSet({ allowExec: false });
    s.setFileRules(file);
    assert.equal(s.apply({ id: "web@web1", json: web(), revision: 3, deleted: false }), true);
    assert.deepEqual(s.effective.map((r) => r.id), ["db@g1", "web@web1"]);
    assert.equal(s.apply({ id: "web@web1", json: "", revision: 4, deleted: true }), true);
    assert.deepEqual(s.effective.map((r) => r.id), ["db@g1"]);
    assert.equal(s.apiEntry("web@web1"), undefined);
  });

  it("never lets an older revision undo a newer one", () => {
    const s = new RuleSet({ allowExec: false });
    s.apply({ id: "web@web1", json: web({ cooldown_ms: 1 }), revision: 5, deleted: false });
    assert.equal(s.apply({ id: "web@web1", json: web({ cooldown_ms: 2 }), revision: 4, deleted: false }), false);
    assert.equal(s.apply({ id: "web@web1", json: "", revision: 5, deleted: true }), false);
    assert.equal(s.effective[0]?.cooldownMs, 1);
    // the same text again at a higher revision changes nothing either
    assert.equal(s.apply({ id: "web@web1", json: web({ cooldown_ms: 1 }), revision: 6, deleted: false }), false);
    assert.equal(s.apply({ id: "web@web1", json: web({ cooldown_ms: 7 }), revision: 7, deleted: false }), true);
    assert.equal(s.effective[0]?.cooldownMs, 7);
    // forget (this service deleted it): the watch's later deletion is a no-op, a newer put comes back
    assert.equal(s.forget("web@web1"), true);
    assert.equal(s.apply({ id: "web@web1", json: "", revision: 8, deleted: true }), false);
    assert.equal(s.apply({ id: "web@web1", json: web(), revision: 9, deleted: false }), true);
    assert.equal(s.effective.length, 1);
  });

  it("keeps stored rules that are not usable out of effect, saying why", () => {
    const s = new RuleSet({ allowExec: false });
    s.setFileRules(file);
    s.apply({ id: "x@web1", json: '{"service":"x","guest":"web1","when":[]}', revision: 1, deleted: false });
    s.apply({ id: "y@web1", json: web({ service: "y", actions: [{ exec: { argv: ["true"] } }] }), revision: 2, deleted: false });
    s.apply({ id: "z@web1", json: web(), revision: 3, deleted: false }); // stored under another id than it says
    s.apply({ id: "db@g1", json: JSON.stringify({ service: "db", guest: "g1", when: [{ vmm: "GUEST_PANICKED" }] }), revision: 4, deleted: false });
    assert.deepEqual(s.effective.map((r) => r.id), ["db@g1"]);
    assert.equal(s.effective[0]!.when[0]!.probe, "process", "the file's rule wins");
    const why = Object.fromEntries(s.apiEntries.map((e) => [e.id, e.inactiveReason]));
    assert.match(why["x@web1"]!, /rule\.when: expected a non-empty list/);
    assert.match(why["y@web1"]!, /may not run commands/);
    assert.match(why["z@web1"]!, /stored as z@web1 but its service and guest make it web@web1/);
    assert.match(why["db@g1"]!, /the rules file has a rule with the same id/);
    // the same stored rule is fine on a host that allows commands
    const open = new RuleSet({ allowExec: true });
    open.apply({ id: "y@web1", json: web({ service: "y", actions: [{ exec: { argv: ["true"] } }] }), revision: 2, deleted: false });
    assert.deepEqual(open.effective.map((r) => r.id), ["y@web1"]);
  });
});
