import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import type { NatsConnection } from "@nats-io/transport-node";
import { api, ErrorCode, VesperError } from "@vesper/protocol";
import { isLoopbackListen, parseTokens, startGateway, tokenAuthorizer, type Gateway } from "../src/index.js";
import { connectNats, fakeLoader, fakeRules, quietLog, stopPrivateNats, uniq } from "./helpers.js";

after(stopPrivateNats);

const OPS = "ops-token-0123456789abcdef";
const CI = "ci-token-0123456789abcdef";
const RO = "readonly-token-0123456789";
const DEPLOY = "deploy-token-0123456789ab";
const TOKENS = JSON.stringify({
  clients: [
    { name: "ops", token: OPS, allow: ["*"] },
    { name: "ci", token: CI, allow: ["read", "insmod"] },
    { name: "grafana", sha256: createHash("sha256").update(RO).digest("hex"), allow: ["watch", "guests"] },
    { name: "deploy", token: DEPLOY, allow: ["rules", "rules-add"] },
  ],
});

describe("tokens file", () => {
  it("parses names, plain and hashed tokens, and permission words", () => {
    const c = parseTokens(TOKENS);
    assert.deepEqual(c.map((x) => x.name), ["ops", "ci", "grafana", "deploy"]);
    // "read" covers listing rules, never changing them
    assert.deepEqual([...c[1]!.allow].sort(), ["ListGuests", "ListProbes", "ListRules", "VirtInsmod", "WatchEvents"]);
    assert.deepEqual([...c[2]!.allow].sort(), ["ListGuests", "WatchEvents"]);
    assert.deepEqual([...c[3]!.allow].sort(), ["AddRule", "ListRules"]);
    assert.equal(c[0]!.allow.size, 8);
    assert.deepEqual(
      [...parseTokens(JSON.stringify({ clients: [{ name: "x", token: OPS, allow: ["AddRule", "RemoveRule", "rules-rm"] }] }))[0]!.allow].sort(),
      ["AddRule", "RemoveRule"],
    );
  });

  it("refuses bad files with a message that says what is wrong", () => {
    const bad = (clients: unknown, re: RegExp): void =>
      assert.throws(() => parseTokens(JSON.stringify({ clients }), "t.json"), (e: unknown) => {
        assert.ok(e instanceof VesperError && e.code === ErrorCode.InvalidArgument);
        assert.match(e.message, /^tokens file t\.json: /);
        assert.match(e.message, re);
        return true;
      });
    assert.throws(() => parseTokens("{", "t.json"), /not valid JSON/);
    assert.throws(() => parseTokens("[]", "t.json"), /expected \{"clients"/);
    bad([], /no clients/);
    bad([{ name: "a", token: "short", allow: ["*"] }], /at least 16/);
    bad([{ name: "a", token: OPS, allow: ["reboot"] }], /unknown permission "reboot"/);
    bad([{ name: "a", token: OPS, allow: [] }], /non-empty/);
    bad([{ name: "a b", token: OPS, allow: ["*"] }], /name/);
    bad([{ name: "a", token: OPS, sha256: "00", allow: ["*"] }], /either "token"/);
    bad([{ name: "a", token: OPS, allow: ["*"] }, { name: "b", token: OPS, allow: ["read"] }], /twice/);
  });

  it("knows loopback listen addresses", () => {
    assert.ok(isLoopbackListen("127.0.0.1:50051"));
    assert.ok(isLoopbackListen("localhost:0"));
    assert.ok(isLoopbackListen("[::1]:50051"));
    assert.ok(!isLoopbackListen("0.0.0.0:50051"));
    assert.ok(!isLoopbackListen("10.0.0.5:50051"));
  });
});

function unary<Req, Res>(
  fn: (req: Req, md: Metadata, opts: { deadline: Date }, cb: (err: ServiceError | null, res: Res) => void) => unknown,
  req: Req,
  token?: string,
): Promise<Res> {
  const md = new Metadata();
  if (token !== undefined) md.set("authorization", `Bearer ${token}`);
  return new Promise((resolve, reject) => {
    fn(req, md, { deadline: new Date(Date.now() + 5000) }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

async function code(p: Promise<unknown>): Promise<{ code: status; details: string; vesper: unknown }> {
  return p.then(
    () => assert.fail("the call should have been refused"),
    (e: ServiceError) => ({ code: e.code, details: e.details, vesper: e.metadata.get("vesper-error-code")[0] }),
  );
}

describe("a gateway with bearer tokens", () => {
  let nc: NatsConnection;
  let gw: Gateway;
  let client: api.VesperClient;
  let loader: { stop(): Promise<void> };
  let rules: { stop(): Promise<void> };
  const guest = uniq("auth");

  before(async () => {
    nc = await connectNats();
    gw = await startGateway({ nc, listen: "127.0.0.1:0", log: quietLog, authorize: tokenAuthorizer(parseTokens(TOKENS)) });
    client = new api.VesperClient(gw.address, credentials.createInsecure());
    loader = await fakeLoader(nc, {
      insmod: async (r) => ({ guest: r.guest, probe: r.probe, instance: "vesper-x", events: [] }),
      rmmod: async (r) => ({ guest: r.guest, probe: r.probe, guestClean: true }),
      guests: async () => ({ guests: [] }),
    });
    rules = await fakeRules(nc, {
      list: async () => ({ rules: [], rulesFile: "" }),
      add: async () => ({ rule: api.RuleInfo.fromPartial({ id: "web@web1" }), replaced: false }),
      remove: async (r) => ({ id: r.id }),
    });
  });

  after(async () => {
    await rules.stop();
    await loader.stop();
    client.close();
    await gw.close();
    await nc.close();
  });

  it("no token: UNAUTHENTICATED, for unary calls and WatchEvents", async () => {
    const e = await code(unary(client.listGuests.bind(client), { guest: "", withTracepoints: false }));
    assert.equal(e.code, status.UNAUTHENTICATED);
    assert.equal(e.vesper, "UNAUTHENTICATED");
    assert.match(e.details, /needs a bearer token/);
    const call = client.watchEvents(api.WatchEventsRequest.fromPartial({ guest }));
    const err = await new Promise<ServiceError>((resolve) => call.once("error", resolve));
    assert.equal(err.code, status.UNAUTHENTICATED);
  });

  it("an unknown token: UNAUTHENTICATED", async () => {
    const e = await code(unary(client.virtInsmod.bind(client), { guest, probe: "exits", options: {} }, "not-a-known-token-at-all"));
    assert.equal(e.code, status.UNAUTHENTICATED);
    assert.match(e.details, /not known/);
  });

  it("a token without rmmod permission: PERMISSION_DENIED naming the client; its other calls pass", async () => {
    const e = await code(unary(client.virtRmmod.bind(client), { guest, probe: "exits", flags: 0 }, CI));
    assert.equal(e.code, status.PERMISSION_DENIED);
    assert.equal(e.vesper, "PERMISSION_DENIED");
    assert.match(e.details, /client ci may not call VirtRmmod/);
    const ok = await unary(client.virtInsmod.bind(client), { guest, probe: "exits", options: {} }, CI);
    assert.equal(ok.instance, "vesper-x");
    const ro = await code(unary(client.virtInsmod.bind(client), { guest, probe: "exits", options: {} }, RO));
    assert.equal(ro.code, status.PERMISSION_DENIED);
  });

  it("allowed calls pass (plain and hashed tokens)", async () => {
    const r = await unary(client.virtRmmod.bind(client), { guest, probe: "exits", flags: 0 }, OPS);
    assert.equal(r.guestClean, true);
    const g = await unary(client.listGuests.bind(client), { guest: "", withTracepoints: false }, RO);
    assert.deepEqual(g.guests, []);
    const md = new Metadata();
    md.set("authorization", `Bearer ${RO}`);
    const call = client.watchEvents(api.WatchEventsRequest.fromPartial({ guest }), md);
    await new Promise<void>((resolve, reject) => {
      call.once("metadata", () => resolve());
      call.once("error", reject);
    });
    call.cancel();
  });

  it("rules: listing is read-only, adding and removing need their own permission", async () => {
    const json = '{"service":"web","guest":"web1","when":[{"exit":{}}]}';
    const add = (token: string) => unary(client.addRule.bind(client), { json, replace: false, validateOnly: false }, token);
    const rm = (token: string) => unary(client.removeRule.bind(client), { id: "web@web1" }, token);
    // ci has "read" (and insmod): it sees the rules but may not change them
    assert.deepEqual((await unary(client.listRules.bind(client), {}, CI)).rules, []);
    for (const [p, method] of [[add(CI), "AddRule"], [rm(CI), "RemoveRule"]] as const) {
      const e = await code(p);
      assert.equal(e.code, status.PERMISSION_DENIED);
      assert.match(e.details, new RegExp(`client ci may not call ${method}`));
    }
    // grafana (watch, guests) may not even list them
    assert.equal((await code(unary(client.listRules.bind(client), {}, RO))).code, status.PERMISSION_DENIED);
    // deploy: rules and rules-add, not rules-rm
    assert.equal((await add(DEPLOY)).rule?.id, "web@web1");
    assert.match((await code(rm(DEPLOY))).details, /client deploy may not call RemoveRule/);
    assert.equal((await rm(OPS)).id, "web@web1");
    assert.equal((await code(unary(client.listRules.bind(client), {}))).code, status.UNAUTHENTICATED);
  });
});
