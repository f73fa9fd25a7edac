/** The KV store of API rules against a real (private) nats-server with JetStream. */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import { ErrorCode, isVesperError } from "@vesper/protocol";
import { RULES_BUCKET, RuleStore, type StoredRule } from "../src/index.js";
import { NatsServer } from "../../../test/harness/nats-server.js";

describe("rule store (KV vesper_rules)", () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let store: RuleStore;

  before(async () => {
    nats = await NatsServer.start();
    nc = await connect({ servers: nats.url });
    store = await RuleStore.open(nc);
  });

  after(async () => {
    await nc?.close();
    await nats?.stop();
  });

  it("creates once, replaces with put, lists, deletes; create after delete works", async () => {
    const r1 = await store.create("web@web1", '{"a":1}');
    await assert.rejects(store.create("web@web1", '{"a":2}'), (e: unknown) => isVesperError(e, ErrorCode.RuleAlreadyExists));
    const r2 = await store.put("web@web1", '{"a":3}');
    assert.ok(r2 > r1);
    assert.deepEqual(await store.list(), [{ id: "web@web1", json: '{"a":3}', revision: r2, deleted: false }]);
    assert.equal((await store.get("web@web1"))?.json, '{"a":3}');
    await store.delete("web@web1");
    assert.deepEqual(await store.list(), []);
    assert.equal(await store.get("web@web1"), undefined);
    assert.ok((await store.create("web@web1", '{"a":4}')) > r2);
  });

  it("watches: current entries first, then changes, deletions included; other keys are skipped", async () => {
    await store.put("db@g1", '{"d":1}');
    const w = await store.watch();
    const seen: StoredRule[] = [];
    const done = (async () => {
      for await (const s of w.entries) seen.push(s);
    })();
    const kv = await new Kvm(nc).open(RULES_BUCKET);
    await kv.put("not-a-rule-key", "x");
    await store.put("api@g2", '{"x":1}');
    await store.delete("db@g1");
    const deadline = Date.now() + 5000;
    while (!seen.some((s) => s.id === "db@g1" && s.deleted) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    w.stop();
    await done;
    const ids = seen.map((s) => `${s.id}${s.deleted ? " deleted" : ""}`);
    assert.deepEqual(ids.filter((i) => i !== "web@web1"), ["db@g1", "api@g2", "db@g1 deleted"]);
    assert.ok(ids.includes("web@web1"), "the entry of the previous test is delivered as current");
  });
});
