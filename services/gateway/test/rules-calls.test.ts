/** ListRules / AddRule / RemoveRule: forwarded to the rules service over real NATS, errors mapped. */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import type { NatsConnection } from "@nats-io/transport-node";
import { api, ErrorCode, VesperError } from "@vesper/protocol";
import { startGateway, type Gateway } from "../src/index.js";
import { connectNats, fakeRules, quietLog, stopPrivateNats } from "./helpers.js";

after(stopPrivateNats);

function unary<Req, Res>(
  fn: (req: Req, md: Metadata, opts: { deadline: Date }, cb: (err: ServiceError | null, res: Res) => void) => unknown,
  req: Req,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    fn(req, new Metadata(), { deadline: new Date(Date.now() + 5000) }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

function refused(p: Promise<unknown>): Promise<ServiceError> {
  return p.then(
    () => assert.fail("the call should have failed"),
    (e: ServiceError) => e,
  );
}

const RULE = '{"service":"web","guest":"web1","when":[{"exit":{"comm":"httpd"}}]}';

describe("rule RPCs over real NATS", () => {
  let nc: NatsConnection;
  let gw: Gateway;
  let client: api.VesperClient;

  before(async () => {
    nc = await connectNats();
    gw = await startGateway({ nc, listen: "127.0.0.1:0", log: quietLog, rulesTimeoutMs: 1500 });
    client = new api.VesperClient(gw.address, credentials.createInsecure());
  });

  after(async () => {
    client.close();
    await gw.close();
    await nc.close();
  });

  it("no rules service: UNAVAILABLE that says how to start it", async () => {
    for (const call of [
      () => unary(client.listRules.bind(client), {}),
      () => unary(client.addRule.bind(client), { json: RULE, replace: false, validateOnly: false }),
      () => unary(client.removeRule.bind(client), { id: "web@web1" }),
    ]) {
      const e = await refused(call());
      assert.equal(e.code, status.UNAVAILABLE);
      assert.deepEqual(e.metadata.get("vesper-error-code"), ["UNAVAILABLE"]);
      assert.match(e.details, /^the rules service is not answering on vesper\.svc\.rules\.(list|add|remove): start it with vesper-host \(it runs by default; with --services, include rules\)$/);
    }
  });

  it("forwards each request as it is and returns the service's answer", async () => {
    const adds: api.AddRuleRequest[] = [];
    const removes: string[] = [];
    const info = api.RuleInfo.fromPartial({
      id: "web@web1",
      service: "web",
      guest: "web1",
      source: api.RuleSource.RULE_SOURCE_API,
      json: RULE,
      probes: [{ probe: "process", loaded: true }],
      lastFired: { firedUnixMs: 1_700_000_000_000n, reason: { pid: "42" } },
    });
    const svc = await fakeRules(nc, {
      list: async () => ({ rules: [info], rulesFile: "/etc/vesper/rules.json" }),
      add: async (r) => (adds.push(r), { rule: info, replaced: r.replace }),
      remove: async (r) => (removes.push(r.id), { id: r.id }),
    });
    try {
      const list = await unary(client.listRules.bind(client), {});
      assert.deepEqual(list, { rules: [info], rulesFile: "/etc/vesper/rules.json" });
      const added = await unary(client.addRule.bind(client), { json: RULE, replace: true, validateOnly: true });
      assert.deepEqual(added, { rule: info, replaced: true });
      assert.deepEqual(adds, [{ json: RULE, replace: true, validateOnly: true }]);
      assert.deepEqual(await unary(client.removeRule.bind(client), { id: "web@web1" }), { id: "web@web1" });
      assert.deepEqual(removes, ["web@web1"]);
    } finally {
      await svc.stop();
    }
  });

  it("maps the rules service's errors to gRPC codes with the Vesper code in the trailer", async () => {
    const svc = await fakeRules(nc, {
      add: async (r) => {
        if (r.json.includes("exitt")) throw new VesperError(ErrorCode.InvalidArgument, 'rule.when[0]: unknown condition "exitt"');
        if (r.json.includes("exec")) throw new VesperError(ErrorCode.RuleNotAllowed, "rule x@web1: actions[0] (exec) runs sh");
        throw new VesperError(ErrorCode.RuleAlreadyExists, "rule web@web1 already exists: set replace to overwrite it");
      },
      remove: async (r) => {
        if (r.id === "db@web1") throw new VesperError(ErrorCode.RuleInFile, "rule db@web1 comes from the rules file r.json: edit the rules file");
        throw new VesperError(ErrorCode.UnknownRule, `there is no rule ${r.id}`);
      },
    });
    try {
      const cases: Array<[() => Promise<unknown>, status, string, RegExp]> = [
        [() => unary(client.addRule.bind(client), { json: '{"when":[{"exitt":{}}]}', replace: false, validateOnly: false }), status.INVALID_ARGUMENT, "INVALID_ARGUMENT", /unknown condition "exitt"/],
        [() => unary(client.addRule.bind(client), { json: '{"exec":1}', replace: false, validateOnly: false }), status.FAILED_PRECONDITION, "RULE_NOT_ALLOWED", /runs sh/],
        [() => unary(client.addRule.bind(client), { json: RULE, replace: false, validateOnly: false }), status.ALREADY_EXISTS, "RULE_ALREADY_EXISTS", /already exists/],
        [() => unary(client.removeRule.bind(client), { id: "db@web1" }), status.FAILED_PRECONDITION, "RULE_IN_FILE", /edit the rules file/],
        [() => unary(client.removeRule.bind(client), { id: "nope@web1" }), status.NOT_FOUND, "UNKNOWN_RULE", /there is no rule nope@web1/],
      ];
      for (const [p, code, vesper, re] of cases) {
        const e = await refused(p());
        assert.equal(e.code, code, e.details);
        assert.deepEqual(e.metadata.get("vesper-error-code"), [vesper]);
        assert.match(e.details, re);
      }
    } finally {
      await svc.stop();
    }
  });

  it("refuses a bad rule id and an empty rule before asking the rules service", async () => {
    let asked = 0;
    const svc = await fakeRules(nc, {
      add: async () => (asked++, { rule: undefined, replaced: false }),
      remove: async (r) => (asked++, { id: r.id }),
    });
    try {
      for (const id of ["web", "web@", "@web1", "a.b@web1", "web@we b1"]) {
        const e = await refused(unary(client.removeRule.bind(client), { id }));
        assert.equal(e.code, status.INVALID_ARGUMENT, id);
        assert.match(e.details, /invalid rule id .*use <service>@<guest>/);
      }
      const e = await refused(unary(client.addRule.bind(client), { json: "  ", replace: false, validateOnly: false }));
      assert.equal(e.code, status.INVALID_ARGUMENT);
      assert.match(e.details, /needs the rule as JSON/);
      assert.equal(asked, 0);
    } finally {
      await svc.stop();
    }
  });
});
