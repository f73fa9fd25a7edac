/**
 * Per-guest NATS credentials on a private nats-server configured by
 * natsAuthConfig (scripts/nats-config.ts): a guest can use only its own ring
 * subjects. It cannot publish as another guest (the server drops the message:
 * nobody receives it) nor read another guest's answers. The host services run
 * with credentials in their --nats URL, and a real guest frontend with
 * --nats-user/--nats-pass comes online.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { connect, type Msg, type NatsConnection } from "@nats-io/transport-node";
import { VesperApiClient } from "@vesper/cli";
import { natsAuthConfig, natsUrlWithCredentials, type NatsAuth } from "@vesper/host";
import { subjects } from "@vesper/protocol";
import { HostProcess } from "../harness/host-process.js";
import { PrivateNats } from "../harness/private-nats.js";
import { waitFor } from "../harness/wait.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const tag = `nc${process.pid}`;
const A = `ga-${tag}`;
const B = `gb-${tag}`;

let server: PrivateNats;
let auth: NatsAuth;
const conns: NatsConnection[] = [];

async function as(user: { user: string; password: string }): Promise<NatsConnection> {
  const nc = await connect({ servers: server.hostPort, user: user.user, pass: user.password, name: user.user });
  conns.push(nc);
  return nc;
}

/** Collects what a subscription receives. */
function collect(nc: NatsConnection, subject: string): Msg[] {
  const got: Msg[] = [];
  const sub = nc.subscribe(subject);
  void (async () => {
    try {
      for await (const m of sub) got.push(m);
    } catch {
      /* a denied subscription ends with a permissions violation */
    }
  })();
  return got;
}

/** The permission errors a connection reports. */
function permissionErrors(nc: NatsConnection): string[] {
  const errs: string[] = [];
  void (async () => {
    for await (const s of nc.status()) if (s.type === "error") errs.push(String(s.error));
  })();
  return errs;
}

before(async () => {
  auth = natsAuthConfig({ guests: [A, B], listen: "127.0.0.1:4222" });
  server = await PrivateNats.start(auth.config);
});

after(async () => {
  for (const nc of conns) await nc.close().catch(() => undefined);
  await server?.stop();
});

describe("per-guest NATS users", () => {
  it("the generated config gives each guest only its ring subjects", () => {
    assert.match(auth.config, new RegExp(`publish: \\{ allow: \\["vesper\\.ring\\.${A}\\.up\\.>"\\] \\}`));
    assert.match(auth.config, new RegExp(`subscribe: \\{ allow: \\["vesper\\.ring\\.${A}\\.down"\\] \\}`));
    assert.notEqual(auth.guests.get(A)!.password, auth.guests.get(B)!.password);
    const again = natsAuthConfig({ guests: [A, B, "gc"], keep: { [auth.guests.get(A)!.user]: auth.guests.get(A)!.password } });
    assert.equal(again.guests.get(A)!.password, auth.guests.get(A)!.password, "kept passwords stay");
  });

  it("a wrong password is refused", async () => {
    await assert.rejects(connect({ servers: server.hostPort, user: auth.guests.get(A)!.user, pass: "wrong", reconnect: false }), /Authorization/i);
  });

  it("guest A cannot publish as guest B: the message never arrives; A's own does", async () => {
    const host = await as(auth.host);
    const up = collect(host, "vesper.ring.*.up.>");
    const events = collect(host, "vesper.events.>");
    await host.flush();
    const a = await as(auth.guests.get(A)!);
    const errs = permissionErrors(a);
    a.publish(subjects.ringUpCtl(B), "forged hello");
    a.publish(subjects.ringUpData(B), "forged pages");
    a.publish(subjects.events(B, "exits"), "forged event");
    a.publish(subjects.ringDown(B), "forged answer");
    a.publish(subjects.ringUpCtl(A), "mine");
    await a.flush();
    await waitFor("A's own message", () => up.length >= 1, { timeoutMs: 5_000 });
    await host.flush();
    assert.deepEqual(up.map((m) => [m.subject, m.string()]), [[subjects.ringUpCtl(A), "mine"]]);
    assert.equal(events.length, 0);
    await waitFor("permission violations reported to A", () => errs.length >= 4, { timeoutMs: 5_000 });
    assert.ok(errs.every((e) => /permissions violation for publish/i.test(e)), errs.join("\n"));
  });

  it("guest A cannot read guest B's down subject, nor anything else", async () => {
    const host = await as(auth.host);
    const a = await as(auth.guests.get(A)!);
    const b = await as(auth.guests.get(B)!);
    const errs = permissionErrors(a);
    const spied = collect(a, subjects.ringDown(B));
    const spiedAll = collect(a, "vesper.ring.>");
    const mine = collect(a, subjects.ringDown(A));
    const bGot = collect(b, subjects.ringDown(B));
    await a.flush();
    await b.flush();
    host.publish(subjects.ringDown(B), "for B");
    host.publish(subjects.ringDown(A), "for A");
    await host.flush();
    await waitFor("B's and A's answers", () => bGot.length === 1 && mine.length === 1, { timeoutMs: 5_000 });
    await a.flush();
    assert.equal(spied.length, 0);
    assert.equal(spiedAll.length, 0);
    await waitFor("subscription violations reported to A", () => errs.filter((e) => /subscription/i.test(e)).length >= 2, { timeoutMs: 5_000 });
  });

  it("a guest cannot reach the JetStream API or the service bus", async () => {
    const a = await as(auth.guests.get(A)!);
    await assert.rejects(a.request("$JS.API.INFO", undefined, { timeout: 2_000 }));
    await assert.rejects(a.request(subjects.loaderGuests, undefined, { timeout: 2_000 }));
  });
});

describe("host services and a guest frontend with credentials", () => {
  let host: HostProcess;
  let client: VesperApiClient;
  const frontends: ChildProcess[] = [];

  const frontend = (guestId: string, user: string, pass: string): ChildProcess => {
    const p = spawn(
      process.execPath,
      [
        path.join(REPO_ROOT, "dist", "guest-frontend.mjs"),
        ...["--guest-id", guestId, "--transport", "nats", "--nats", server.hostPort, "--nats-user", user, "--nats-pass", pass],
        ...["--instance-prefix", `vesper_${tag}`, "--no-oom-protect"],
      ],
      { stdio: ["ignore", "ignore", process.env.VESPER_TEST_DEBUG ? "inherit" : "ignore"] },
    );
    frontends.push(p);
    return p;
  };

  before(async () => {
    const runDir = mkdtempSync("/tmp/vesper-it-natsauth-");
    host = await HostProcess.start({
      runDir,
      services: ["loader", "listener", "gateway"],
      extraArgs: ["--nats", natsUrlWithCredentials(auth.host, server.hostPort)],
    });
    client = new VesperApiClient(host.address!, { timeoutMs: 10_000 });
  });

  after(async () => {
    for (const p of frontends) {
      if (p.exitCode === null && p.signalCode === null) {
        const exited = new Promise((r) => p.once("exit", r));
        p.kill("SIGTERM");
        await exited;
      }
    }
    client?.close();
    await host?.stop();
  });

  it("guest A's frontend with its own credentials comes online; with A's credentials nobody can pose as B", async () => {
    const ua = auth.guests.get(A)!;
    frontend(A, ua.user, ua.password);
    frontend(B, ua.user, ua.password); // A's credentials, B's id: every message it sends is denied
    await waitFor(`${A} online`, async () => (await client.listGuests()).find((g) => g.id === A && g.state === 1), { timeoutMs: 60_000 });
    // B's impostor has had as long as A needed, and more: it never said Hello.
    await new Promise((r) => setTimeout(r, 2_000));
    assert.equal((await client.listGuests()).find((g) => g.id === B), undefined);
  });
});
