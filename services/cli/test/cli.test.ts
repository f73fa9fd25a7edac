import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { connect, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, type JetStreamClient } from "@nats-io/jetstream";
import { startGateway, type Gateway } from "@vesper/gateway";
import { LiveFeed, serve } from "@vesper/host-common";
import { api, bus, createLogger, ErrorCode, EVENTS_STREAM, subjects, VesperError } from "@vesper/protocol";
import { main } from "../src/main.js";
import { eventToJson, formatEventLine } from "../src/format.js";
import { privateNatsUrl, stopPrivateNats } from "../../gateway/test/helpers.js";

after(stopPrivateNats);

const log = createLogger("cli-test", "silent");
const uniq = (p: string): string => `${p}-${randomBytes(4).toString("hex")}`;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(args: string[], opts: { signal?: AbortSignal } = {}): Promise<Run> {
  let stdout = "";
  let stderr = "";
  const code = await main(args, {
    stdout: { write: (s) => ((stdout += s), true) },
    stderr: { write: (s) => ((stderr += s), true) },
    env: {},
    ...opts,
  });
  return { code, stdout, stderr };
}

function event(guest: string, probe: string, name: string, pid: number): api.WatchEventsResponse {
  return {
    kind: {
      $case: "event",
      value: api.Event.fromPartial({
        guest,
        probe,
        event: name,
        cpu: 2,
        ts: 98_765_432_100n,
        receivedUnixNs: 1_700_000_000_123_456_789n,
        pid,
        comm: "bash",
        fields: {
          code: { kind: { $case: "int", value: -11n } },
          huge: { kind: { $case: "uint", value: 1n << 63n } },
          path: { kind: { $case: "str", value: "/tmp/a b" } },
          raw: { kind: { $case: "raw", value: Buffer.from([0xde, 0xad]) } },
          pid: { kind: { $case: "int", value: 7n } },
        },
      }),
    },
    streamSeq: 0n,
  };
}

async function publish(js: JetStreamClient, res: api.WatchEventsResponse): Promise<number> {
  const v = res.kind?.value;
  assert.ok(v);
  return (await js.publish(subjects.events(v.guest, v.probe), api.WatchEventsResponse.encode(res).finish())).seq;
}

describe("vesper CLI against a gateway on real NATS", () => {
  let nc: NatsConnection;
  let js: JetStreamClient;
  let gw: Gateway;
  let addr: string[];
  const subs: Subscription[] = [];
  const guest = uniq("web");
  const ghost = uniq("ghost");
  // The gateway's live feed, as a listener in its process would fill it.
  const feed = new LiveFeed();

  before(async () => {
    nc = await connect({ servers: await privateNatsUrl() });
    js = jetstream(nc);
    gw = await startGateway({ nc, listen: "127.0.0.1:0", log, live: feed });
    addr = ["--addr", gw.address];
  });

  after(async () => {
    for (const s of subs) s.unsubscribe();
    await gw.close();
    await nc.close();
  });

  const loader = async (): Promise<void> => {
    const reply =
      <R>() =>
      (o: { ok: R } | { error: bus.BusError }): { response?: R; error?: bus.BusError } =>
        "ok" in o ? { response: o.ok } : { error: o.error };
    subs.push(
      serve(
        nc,
        subjects.loaderInsmod,
        api.VirtInsmodRequest,
        bus.InsmodReply,
        reply<api.VirtInsmodResponse>(),
        async (req) => {
          if (req.guest === ghost) throw new VesperError(ErrorCode.UnknownGuest, `guest ${req.guest} is not known`);
          if (req.probe === "broken") {
            throw new VesperError(ErrorCode.KernelRefused, "writing kprobe_events failed", {
              details: ["error_log: Failed to find symbol: do_exitt"],
            });
          }
          return { guest: req.guest, probe: req.probe, instance: `vesper-${req.probe}`, events: Object.keys(req.options) };
        },
        log,
      ),
      serve(
        nc,
        subjects.loaderGuests,
        api.ListGuestsRequest,
        bus.GuestsReply,
        reply<api.ListGuestsResponse>(),
        async () => ({
          guests: [
            api.Guest.fromPartial({
              id: guest,
              state: api.GuestState.GUEST_STATE_ONLINE,
              kernelRelease: "6.8.0-vesper",
              loadedProbes: ["process", "files"],
              lastSeenUnixMs: BigInt(Date.now() - 3000),
            }),
          ],
        }),
        log,
      ),
      serve(
        nc,
        subjects.loaderProbes,
        api.ListProbesRequest,
        bus.ProbesReply,
        reply<api.ListProbesResponse>(),
        async () => ({
          probes: [
            api.ProbeInfo.fromPartial({
              name: "process",
              description: "process exits and forks",
              source: "builtin",
              spec: {
                name: "process",
                tracepoints: [{ system: "sched", event: "sched_process_exit", filter: "" }],
                kprobes: [{ name: "do_exit", symbol: "do_exit", fetchArgs: [] }],
              },
            }),
          ],
        }),
        log,
      ),
    );
    await nc.flush();
  };

  it("insmod with no loader running: UNAVAILABLE naming probe-loader", async () => {
    const r = await run([...addr, "insmod", guest, "process"]);
    assert.equal(r.code, 1);
    assert.equal(
      r.stderr,
      "vesper: probe-loader is not answering on vesper.svc.loader.insmod: is vesper-host running? (UNAVAILABLE)\n",
    );
  });

  it("insmod forwards guest, probe and k=v options", async () => {
    await loader();
    const r = await run([...addr, "insmod", guest, "process", "buffer_kb=512", "filter.x=a=b"]);
    assert.equal(r.stderr, "");
    assert.equal(r.code, 0);
    assert.equal(
      r.stdout,
      `loaded probe process into guest ${guest} (instance vesper-process): events buffer_kb, filter.x\n`,
    );
  });

  it("insmod of an unknown guest: NOT_FOUND turned into a clear message", async () => {
    const r = await run([...addr, "insmod", ghost, "process"]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, `vesper: guest ${ghost} is not known: see \`vesper guests\`\n`);
  });

  it("kernel refusal prints the detail lines", async () => {
    const r = await run([...addr, "insmod", guest, "broken"]);
    assert.equal(r.code, 1);
    assert.equal(
      r.stderr,
      `vesper: guest ${guest}'s kernel refused probe broken: writing kprobe_events failed\n  error_log: Failed to find symbol: do_exitt\n`,
    );
  });

  it("guests and probes: tables and --json", async () => {
    const t = await run([...addr, "guests"]);
    assert.equal(t.code, 0);
    const lines = t.stdout.trimEnd().split("\n");
    assert.match(lines[0] ?? "", /^ID\s+STATE\s+KERNEL\s+PROBES\s+LAST SEEN$/);
    assert.match(lines[1] ?? "", new RegExp(`^${guest}\\s+online\\s+6\\.8\\.0-vesper\\s+process,files\\s+3s ago$`));
    const j = await run([...addr, "guests", "--json"]);
    assert.equal(JSON.parse(j.stdout)[0].id, guest);

    const p = await run([...addr, "probes"]);
    assert.equal(p.code, 0);
    assert.match(p.stdout, /^NAME\s+DESCRIPTION\s+EVENTS\n/);
    assert.match(p.stdout, /process\s+process exits and forks\s+sched\/sched_process_exit,vesper_process\/do_exit\n$/);
    const pj = await run([...addr, "probes", "--json"]);
    assert.deepEqual(JSON.parse(pj.stdout)[0].events, ["sched/sched_process_exit", "vesper_process/do_exit"]);
  });

  it("watch --json --count 2: one JSON object per line", async () => {
    const g = uniq("w");
    const s1 = await publish(js, event(g, "process", "sched/sched_process_exit", 100));
    await publish(js, event(uniq("other"), "process", "sched/sched_process_exit", 1));
    const s2 = await publish(js, {
      kind: { $case: "loss", value: { guest: g, probe: "process", cpu: 0, kernelLost: 5n, pagesLost: 0n, readLost: 0n } },
      streamSeq: 0n,
    });
    const s3 = await publish(js, event(g, "files", "vesper_files/open", 101));
    await publish(js, event(g, "process", "sched/sched_process_exit", 102));

    const r = await run([...addr, "watch", "--guest", g, "--json", "--count", "2", "--from-seq", String(s1)]);
    assert.equal(r.stderr, "");
    assert.equal(r.code, 0);
    const lines = r.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
    assert.equal(lines.length, 3); // two events, and the loss between them
    assert.deepEqual(lines[0], {
      guest: g,
      probe: "process",
      event: "sched/sched_process_exit",
      cpu: 2,
      ts: "98765432100",
      received: "2023-11-14T22:13:20.123Z",
      pid: 100,
      comm: "bash",
      seq: s1,
      lost_before: 0,
      code: -11,
      huge: "9223372036854775808",
      path: "/tmp/a b",
      raw: "dead",
      field_pid: 7,
    });
    assert.deepEqual(lines[1], { loss: { guest: g, probe: "process", cpu: 0, kernel_lost: 5, pages_lost: 0, read_lost: 0, seq: s2 } });
    assert.equal(lines[2].seq, s3);
    assert.equal(lines[2].event, "vesper_files/open");
  });

  it("watch (human) filters by probe and event and exits after --count live events", async () => {
    const g = uniq("h");
    const jsm = await jetstreamManager(nc);
    const next = (await jsm.streams.info(EVENTS_STREAM)).state.last_seq + 1;
    const pending = run([...addr, "watch", "--guest", g, "--probe", "process", "--event", "sched_process_exit", "--count", "2", "--from-seq", String(next)]);
    await publish(js, event(g, "process", "sched/sched_process_fork", 1));
    await publish(js, event(g, "files", "sched/sched_process_exit", 2));
    await publish(js, event(g, "process", "sched/sched_process_exit", 3));
    await publish(js, event(g, "process", "sched/sched_process_exit", 4));
    const r = await pending;
    assert.equal(r.code, 0);
    assert.equal(
      r.stdout,
      [3, 4]
        .map(
          (pid) =>
            `2023-11-14T22:13:20.123Z ${g}/process cpu2 sched/sched_process_exit pid=${pid} comm=bash code=-11 huge=9223372036854775808 path="/tmp/a b" raw=dead field_pid=7\n`,
        )
        .join(""),
    );
  });

  it("watch --live prints what the feed offers from now on, with seq 0, and refuses --from-seq", async () => {
    const g = uniq("l");
    const pending = run([...addr, "watch", "--guest", g, "--json", "--count", "1", "--live"]);
    const ev = event(g, "process", "sched/sched_process_exit", 42);
    const data = api.WatchEventsResponse.encode(ev).finish();
    // Offered until the watch is there (the CLI connects in the meantime), each under a new id.
    let n = 0;
    while (feed.watchers === 0) await new Promise((r) => setTimeout(r, 10));
    feed.offer(subjects.events(uniq("other"), "process"), data, `o${n++}`);
    feed.offer(subjects.events(g, "process"), data, `l${n++}`);
    const r = await pending;
    assert.equal(r.stderr, "");
    assert.equal(r.code, 0);
    const lines = r.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
    assert.equal(lines.length, 1);
    assert.equal(lines[0].pid, 42);
    assert.equal(lines[0].seq, 0);
    const bad = await run([...addr, "watch", "--live", "--from-seq", "5"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--live starts at the next event: it cannot be combined with --from-seq/);
  });

  it("watch ends cleanly (exit 0) when interrupted", async () => {
    const ac = new AbortController();
    const pending = run([...addr, "watch", "--guest", uniq("i")], { signal: ac.signal });
    setTimeout(() => ac.abort(), 200);
    const r = await pending;
    assert.deepEqual(r, { code: 0, stdout: "", stderr: "" });
  });
});

describe("vesper CLI without a gateway", () => {
  it("says the gateway cannot be reached and how to fix it", async () => {
    const r = await run(["--addr", "127.0.0.1:1", "guests"]);
    assert.equal(r.code, 1);
    assert.equal(
      r.stderr,
      "vesper: cannot reach the Vesper gateway at 127.0.0.1:1 (UNAVAILABLE): is vesper-host running? start it with `make host` or set --addr\n",
    );
  });

  it("usage errors exit 2", async () => {
    assert.equal((await run(["insmod", "web1"])).code, 2);
    assert.equal((await run(["watch", "--count", "0"])).code, 2);
    assert.equal((await run(["--timeout", "soon", "guests"])).code, 2);
    assert.equal((await run(["frobnicate"])).code, 2);
    assert.equal((await run(["--help"])).code, 0);
  });

  it("the bin exits 1 with the message on stderr", () => {
    const r = spawnSync(process.execPath, ["--import", "tsx", "services/cli/src/bin.ts", "probes"], {
      env: { ...process.env, VESPER_ADDR: "127.0.0.1:1" },
      encoding: "utf8",
      timeout: 20_000,
    });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^vesper: cannot reach the Vesper gateway at 127\.0\.0\.1:1 \(UNAVAILABLE\)/);
  });
});

describe("format", () => {
  it("flattens fields, keeps ts a string, and renames fields that collide", () => {
    const j = eventToJson({ ...event("g", "p", "s/e", 1), streamSeq: 9n });
    assert.equal(j?.ts, "98765432100");
    assert.equal(j?.pid, 1);
    assert.equal(j?.field_pid, 7);
    assert.equal(j?.seq, 9);
    assert.equal(formatEventLine({ kind: undefined, streamSeq: 0n }), undefined);
  });
});
