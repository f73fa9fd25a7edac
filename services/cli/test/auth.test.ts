/** The CLI against a gateway that needs bearer tokens: --token, VESPER_TOKEN, and the error lines. */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { connect, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { parseTokens, startGateway, tokenAuthorizer, type Gateway } from "@vesper/gateway";
import { serve } from "@vesper/host-common";
import { api, bus, createLogger, subjects } from "@vesper/protocol";
import { privateNatsUrl, stopPrivateNats } from "../../gateway/test/helpers.js";
import { main } from "../src/main.js";

const log = createLogger("cli-auth-test", "silent");
const ADMIN = `admin-${randomBytes(12).toString("hex")}`;
const VIEWER = `viewer-${randomBytes(12).toString("hex")}`;

async function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await main(args, {
    stdout: { write: (s) => ((stdout += s), true) },
    stderr: { write: (s) => ((stderr += s), true) },
    env,
  });
  return { code, stdout, stderr };
}

describe("vesper CLI with bearer tokens", () => {
  let nc: NatsConnection;
  let gw: Gateway;
  let subs: Subscription[];
  const guest = `tok-${randomBytes(4).toString("hex")}`;

  before(async () => {
    nc = await connect({ servers: await privateNatsUrl() });
    const authorize = tokenAuthorizer(
      parseTokens(JSON.stringify({ clients: [{ name: "admin", token: ADMIN, allow: ["*"] }, { name: "viewer", token: VIEWER, allow: ["read"] }] })),
    );
    gw = await startGateway({ nc, listen: "127.0.0.1:0", log, authorize });
    const reply = (o: { ok: unknown } | { error: bus.BusError }): bus.RmmodReply =>
      "ok" in o ? { response: o.ok as api.VirtRmmodResponse } : { error: o.error };
    subs = [
      serve(nc, subjects.loaderRmmod, api.VirtRmmodRequest, bus.RmmodReply, reply, async (r) => ({ guest: r.guest, probe: r.probe, guestClean: true }), log),
    ];
    await nc.flush();
  });

  after(async () => {
    for (const s of subs) s.unsubscribe();
    await gw.close();
    await nc.close();
    await stopPrivateNats();
  });

  it("no token: exit 1 and says to set VESPER_TOKEN or --token", async () => {
    const r = await run(["--addr", gw.address, "rmmod", guest, "exits"]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim(), "vesper: the gateway refused the call (UNAUTHENTICATED): set VESPER_TOKEN or --token");
  });

  it("a wrong token says so", async () => {
    const r = await run(["--addr", gw.address, "--token", "nope-nope-nope-nope", "rmmod", guest, "exits"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^vesper: the gateway refused the call \(UNAUTHENTICATED\): the bearer token is not known to this gateway; check VESPER_TOKEN or --token/);
  });

  it("VESPER_TOKEN of a read-only client: rmmod is PERMISSION_DENIED", async () => {
    const r = await run(["--addr", gw.address, "rmmod", guest, "exits"], { VESPER_TOKEN: VIEWER });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^vesper: the gateway refused the call \(PERMISSION_DENIED\): client viewer may not call VirtRmmod/);
  });

  it("--token wins over VESPER_TOKEN, and an allowed call passes", async () => {
    const r = await run(["--addr", gw.address, "--token", ADMIN, "rmmod", guest, "exits"], { VESPER_TOKEN: VIEWER });
    assert.equal(r.stderr, "");
    assert.equal(r.code, 0);
    assert.match(r.stdout, new RegExp(`unloaded probe exits from guest ${guest}`));
  });
});
