/**
 * The failover evaluation (the seed's section 7, reproduced): a two-node Pacemaker cluster
 * (test/harness/pacemaker.ts), each node "hosting" a QEMU guest with busybox httpd, and the resource
 * `web` = ocf:vesper:guest-service (deploy/ocf/guest-service) preferring node1.
 *
 * - mode "vm" (cluster A, the ordinary way): the agent's monitor is VM-level only (is the guest's
 *   QEMU process alive?), every 10 s.
 * - mode "poll" (a service-level polling baseline): the monitor asks the service itself (an HTTP GET
 *   inside the guest) every 10 s; no Vesper.
 * - mode "vesper" (cluster B): Vesper's host services run with a rules file: a killed httpd (process
 *   exit probe) or a guest panic (QMP, once the vmm events exist) makes the rules service write the
 *   state file and run `crm_resource --fail --resource web --node nodeN` at once; the agent's 10 s
 *   monitor reads the same state (and checks QEMU), as a safety net.
 *
 * The guests run in the host's namespaces; the agent starts/stops httpd inside them through a small
 * unix-socket control server run here (a stand-in for a guest agent or ssh: the guests have no NIC),
 * and "HTTP answers" is checked with a GET (busybox nc) to 127.0.0.1:80 inside the guest, over the console.
 *
 * Times are from the failure injection (writing the kill / sysrq command to the guest console, so they
 * include up to a few ms of serial console) to: (1) the Vesper event on the bus, (2) Pacemaker starting
 * recovery (the first CIB poll showing a failure record or the resource no longer running on node1),
 * (3) HTTP answering again from node2's guest. CIB and HTTP are polled (~0.1-0.3 s resolution).
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { api } from "@vesper/protocol";
import { HostProcess } from "./host-process.js";
import { NatsServer } from "./nats-server.js";
import { PacemakerCluster } from "./pacemaker.js";
import { QemuGuest } from "./qemu-guest.js";
import { waitFor } from "./wait.js";

export type Mode = "vm" | "poll" | "vesper";
export type Failure = "kill" | "panic";

export interface ScenarioOptions {
  mode: Mode;
  failure: Failure;
  runDir: string;
  /** How long to watch for a reaction (default 60 s; for "vm"+"kill" this is the "does not notice" window). */
  windowMs?: number;
  monitorIntervalS?: number;
  /**
   * Delay between the resource being up and the failure (default: uniform random in [0, monitor
   * interval)), so the failure falls at a random phase of the polling monitor, as in real life.
   */
  phaseMs?: number;
  /** NATS of the Vesper host services; default: a private nats-server for this scenario (isolation). */
  natsUrl?: string;
  say?: (line: string) => void;
}

export interface ScenarioResult {
  mode: Mode;
  failure: Failure;
  /** ms from the failure to the Vesper exit event on the bus (vesper mode, kill). */
  vesperEventMs: number | undefined;
  /** Which event that was. */
  vesperEvent: string | undefined;
  /** ms from the failure to the rules service's crm_resource action outcome event. */
  actionDoneMs: number | undefined;
  /** ms from the failure to Pacemaker starting recovery (first CIB poll showing it). */
  recoveryMs: number | undefined;
  /** ms from the failure to HTTP answering from node2's guest. */
  httpMs: number | undefined;
  /** The delay after start-up before the failure (the monitor phase). */
  phaseMs: number;
  /** Where `web` ran at the end of the window. */
  finalLocation: string[];
  /** The failure event of the rules service (why), if any. */
  why: Record<string, string> | undefined;
  notes: string[];
}

const ts = (): string => new Date().toISOString().slice(11, 23);

/** Serves "start" / "stop" / "http" lines on a unix socket, running them in the guest over its console. */
function guestControl(guest: QemuGuest, sock: string): net.Server {
  rmSync(sock, { force: true });
  const srv = net.createServer({ allowHalfOpen: true }, (c) => {
    let buf = "";
    c.on("error", () => undefined);
    c.on("data", (d) => {
      buf += d.toString();
      const nl = buf.indexOf("\n");
      if (nl < 0) return;
      const cmd = buf.slice(0, nl).trim();
      const script =
        cmd === "start"
          ? "pidof httpd >/dev/null || httpd -p 80 -h /www; pidof httpd >/dev/null"
          : cmd === "stop"
            ? "killall httpd 2>/dev/null; true"
            : cmd === "status"
              ? "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 127.0.0.1 80 2>/dev/null | grep -q ' 200 '"
              : undefined;
      if (script === undefined) {
        c.end("fail unknown command\n");
        return;
      }
      guest.exec(script, { timeoutMs: 60_000 }).then(
        (r) => c.end(r.status === 0 ? "ok\n" : `fail ${r.output.trim()}\n`),
        (err: unknown) => c.end(`fail ${(err as Error).message}\n`),
      );
    });
  });
  srv.listen(sock);
  return srv;
}

async function httpAnswers(g: QemuGuest): Promise<boolean> {
  if (!g.running) return false;
  // (busybox wget of the static image crashes in its resolver: talk HTTP with nc)
  const r = await g.exec("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 127.0.0.1 80 2>/dev/null", { timeoutMs: 10_000 }).catch(() => undefined);
  return r !== undefined && r.output.includes(" 200 ") && r.output.includes("hello from");
}

function fieldStr(f: api.FieldValue | undefined): string {
  if (f?.kind === undefined) return "";
  return f.kind.$case === "str" ? f.kind.value : f.kind.$case === "raw" ? "" : String(f.kind.value);
}

/**
 * Boots a guest with httpd and a second QMP monitor for Vesper's qemu-bridge (the harness keeps
 * qmp/<name>.qmp for itself). no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer
 * check can fail ("IO-APIC + timer doesn't work!" panic at boot); one retry covers other boot flakes.
 */
async function bootGuest(name: string, runDir: string): Promise<QemuGuest> {
  const start = (): Promise<QemuGuest> =>
    QemuGuest.start({
      name,
      runDir,
      services: ["httpd"],
      bootTimeoutMs: 240_000,
      appendExtra: ["no_timer_check"],
      extraArgs: ["-qmp", `unix:${path.join(runDir, "vmm", `${name}.qmp`)},server=on,wait=off`],
    });
  try {
    return await start();
  } catch {
    return start();
  }
}

export async function runScenario(o: ScenarioOptions): Promise<ScenarioResult> {
  const say = o.say ?? (() => undefined);
  const tag = `${{ vm: "a", vesper: "b", poll: "c" }[o.mode]}${o.failure === "kill" ? "k" : "p"}`;
  const runDir = path.join(o.runDir, tag);
  rmSync(runDir, { recursive: true, force: true });
  mkdirSync(path.join(runDir, "state"), { recursive: true });
  mkdirSync(path.join(runDir, "pids"), { recursive: true });
  mkdirSync(path.join(runDir, "ctl"), { recursive: true });
  mkdirSync(path.join(runDir, "vmm"), { recursive: true });
  const stateDir = path.join(runDir, "state");
  const names = [`fo${tag}1`, `fo${tag}2`];
  const monitorS = o.monitorIntervalS ?? 10;
  const windowMs = o.windowMs ?? 60_000;
  const res: ScenarioResult = {
    mode: o.mode,
    failure: o.failure,
    vesperEventMs: undefined,
    vesperEvent: undefined,
    actionDoneMs: undefined,
    recoveryMs: undefined,
    httpMs: undefined,
    phaseMs: 0,
    finalLocation: [],
    why: undefined,
    notes: [],
  };

  let cluster: PacemakerCluster | undefined;
  const guests: QemuGuest[] = [];
  const servers: net.Server[] = [];
  let host: HostProcess | undefined;
  let nc: NatsConnection | undefined;
  let nats: NatsServer | undefined;
  try {
    say(`[${ts()}] ${tag}: starting cluster + guests ${names.join(", ")}`);
    const [c, ...gs] = await Promise.allSettled([
      PacemakerCluster.start({ prefix: `vf${tag}`, runDir, subnet: { vm: 11, vesper: 12, poll: 13 }[o.mode] }),
      // a second QMP monitor for Vesper's qemu-bridge (the harness keeps qmp/<name>.qmp for itself)
      ...names.map((name) => bootGuest(name, runDir)),
    ]);
    if (c!.status === "fulfilled") cluster = c!.value as PacemakerCluster;
    for (const g of gs) if (g.status === "fulfilled") guests.push(g.value as QemuGuest);
    const failed = [c!, ...gs].find((x) => x.status === "rejected");
    if (failed?.status === "rejected") throw failed.reason;
    if (cluster === undefined) throw new Error("no cluster");
    // Only node1's guest serves at first: stop httpd in node2's guest before anything watches it.
    await guests[1]!.exec("killall httpd 2>/dev/null; true");
    for (const g of guests) {
      writeFileSync(path.join(runDir, "pids", `${g.name}.pid`), `${g.pid}\n`);
      servers.push(guestControl(g, path.join(runDir, "ctl", `${g.name}.sock`)));
    }

    // Event times straight from the bus.
    let natsUrl = o.natsUrl;
    if (natsUrl === undefined) {
      nats = await NatsServer.start();
      natsUrl = nats.url;
    }
    nc = await connect({ servers: natsUrl, name: "failover-eval" });
    const seen: Array<{ at: number; ev: api.Event }> = [];
    const sub = nc.subscribe(`vesper.events.${names[0]}.>`);
    void (async () => {
      for await (const m of sub) {
        try {
          const r = api.WatchEventsResponse.decode(m.data);
          if (r.kind?.$case === "event") seen.push({ at: Date.now(), ev: r.kind.value });
        } catch {
          /* not ours */
        }
      }
    })();

    if (o.mode === "vesper") {
      const cond = [
        { exit: { comm: "httpd", signal: { ne: 0 } } },
        { exit: { comm: "httpd", exit_code: { ne: 0 } } },
        { listen_closed: { port: 80 } },
        { vmm: "GUEST_PANICKED" },
        { vmm: "QEMU_EXITED" },
        { agent_lost: true },
      ];
      const rules = {
        rules: names.map((guest, i) => ({
          service: "web",
          guest,
          when: cond,
          actions: [{ pacemaker: { resource: "web", node: cluster!.nodes[i]!.name, prefix: cluster!.nodes[i]!.nsenter } }],
        })),
      };
      // `network` (listen_closed) may not exist yet: the rules service keeps retrying it; that is fine.
      const rulesFile = path.join(runDir, "rules.json");
      writeFileSync(rulesFile, JSON.stringify(rules, null, 2));
      host = await HostProcess.start({
        runDir,
        extraArgs: ["--rules", rulesFile, "--state-dir", stateDir, "--nats", natsUrl],
        env: { VESPER_RULES_DURABLE: `vesper-rules-eval-${tag}-${process.pid}` },
      });
      say(`[${ts()}] ${tag}: vesper-host up; waiting for the process probe in both guests`);
      await waitFor(
        "the rules service to load `process` into both guests",
        () => {
          const lines = readFileSync(host!.logFile, "utf8").split("\n").filter((l) => l.includes("probe group loaded for the rules") && l.includes('"probe":"process"'));
          return names.every((g) => lines.some((l) => l.includes(`"guest":"${g}"`)));
        },
        { timeoutMs: 180_000, intervalMs: 250 },
      );
    }

    // The resource: node-specific parameters through rules on #uname.
    const ctl = (g: string, cmd: string): string => `echo ${cmd} | socat -t 120 -T 120 - UNIX-CONNECT:${path.join(runDir, "ctl", `${g}.sock`)} | grep -q ^ok`;
    const perNode = names
      .map((g, i) => {
        const n = cluster!.nodes[i]!.name;
        const p = (k: string, v: string): string => `<nvpair id="web-${n}-${k}" name="${k}" value="${v.replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;").replace(/>/g, "&gt;")}"/>`;
        return (
          `<instance_attributes id="web-${n}-attrs" score="${10 - i}"><rule id="web-${n}-rule" score="0">` +
          `<expression id="web-${n}-expr" attribute="#uname" operation="eq" value="${n}"/></rule>` +
          p("guest", g) +
          p("start_command", ctl(g, "start")) +
          p("stop_command", ctl(g, "stop")) +
          p("qemu_pidfile", path.join(runDir, "pids", `${g}.pid`)) +
          p("status_command", ctl(g, "status")) +
          `</instance_attributes>`
        );
      })
      .join("");
    const xml =
      `<primitive id="web" class="ocf" provider="vesper" type="guest-service">` +
      `<instance_attributes id="web-attrs"><nvpair id="web-service" name="service" value="web"/>` +
      `<nvpair id="web-state" name="state_dir" value="${stateDir}"/>` +
      `<nvpair id="web-src" name="monitor_source" value="${o.mode === "poll" ? "command" : o.mode}"/></instance_attributes>` +
      perNode +
      `<meta_attributes id="web-meta"><nvpair id="web-mt" name="migration-threshold" value="1"/>` +
      `<nvpair id="web-st" name="resource-stickiness" value="100"/></meta_attributes>` +
      `<operations><op id="web-mon" name="monitor" interval="${monitorS}s" timeout="20s"/>` +
      `<op id="web-start" name="start" interval="0" timeout="120s"/><op id="web-stop" name="stop" interval="0" timeout="120s"/></operations>` +
      `</primitive>`;
    await cluster.cibCreate("resources", xml);
    await cluster.cibCreate("constraints", `<rsc_location id="web-prefers-node1" rsc="web" node="node1" score="50"/>`);
    await waitFor("web running on node1", async () => (await cluster!.whereRunning("web")).join() === "node1", { timeoutMs: 120_000, intervalMs: 200 });
    await waitFor("HTTP answering in node1's guest", () => httpAnswers(guests[0]!), { timeoutMs: 60_000, intervalMs: 200 });
    if (await httpAnswers(guests[1]!)) throw new Error("node2's guest serves HTTP before any failover");
    // The failure falls at a random phase of the 10 s monitor (a deliberate random delay, not a wait
    // for a condition): injecting right after start-up would always hit the worst case of polling.
    res.phaseMs = Math.round(o.phaseMs ?? Math.random() * monitorS * 1000);
    say(`[${ts()}] ${tag}: web runs on node1, HTTP answers there; injecting ${o.failure} in ${res.phaseMs} ms`);
    await new Promise((r) => setTimeout(r, res.phaseMs));

    // ---- failure ------------------------------------------------------------------------------
    let t0: number;
    let httpdPid = 0;
    if (o.failure === "kill") {
      httpdPid = Number((await guests[0]!.exec("pidof httpd")).output.trim().split(/\s+/)[0]);
      t0 = Date.now();
      void guests[0]!.exec(`kill -9 ${httpdPid}`).catch(() => undefined);
    } else {
      t0 = Date.now();
      void guests[0]!.exec("echo c > /proc/sysrq-trigger", { timeoutMs: 5_000 }).catch(() => undefined);
    }
    const deadline = t0 + windowMs;
    let recovered = false;
    const pollCib = (async () => {
      while (Date.now() < deadline && res.recoveryMs === undefined) {
        const st = await cluster!.status().catch(() => "");
        const loc = await cluster!.whereRunning("web");
        if (/id="web_last_failure_0"/.test(st) || !loc.includes("node1")) {
          res.recoveryMs = Date.now() - t0;
          recovered = true;
          say(`[${ts()}] ${tag}: Pacemaker reacts after ${res.recoveryMs} ms (running on [${loc.join(",")}])`);
          return;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const pollHttp = (async () => {
      while (Date.now() < deadline) {
        if (await httpAnswers(guests[1]!)) {
          res.httpMs = Date.now() - t0;
          say(`[${ts()}] ${tag}: HTTP answers from node2's guest after ${res.httpMs} ms`);
          return;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    await Promise.all([pollCib, pollHttp]);
    void recovered;
    res.finalLocation = await cluster.whereRunning("web");

    // (1): the first Vesper event about the dead httpd: its exit (process) or its listening socket closing (network)
    const first = seen.find(
      (s) =>
        s.at >= t0 &&
        ((s.ev.pid === httpdPid && ((s.ev.probe === "process" && s.ev.event.endsWith("/exit")) || (s.ev.probe === "network" && /listen_clos/.test(s.ev.event)))) ||
          (o.failure === "panic" && s.ev.probe === "vmm" && s.ev.event === "qmp/GUEST_PANICKED")),
    );
    if (first) {
      res.vesperEventMs = first.at - t0;
      res.vesperEvent = `${first.ev.probe}: ${first.ev.event}`;
    }
    const action = seen.find((s) => s.ev.probe === "rules" && s.ev.event === "rules/action" && s.at >= t0);
    if (action) {
      res.actionDoneMs = action.at - t0;
      if (fieldStr(action.ev.fields.ok) !== "1") res.notes.push(`action failed: ${fieldStr(action.ev.fields.detail)}`);
    }
    const failure = seen.find((s) => s.ev.probe === "rules" && s.ev.event === "rules/failure" && s.at >= t0);
    if (failure) {
      res.why = {};
      for (const [k, v] of Object.entries(failure.ev.fields)) res.why[k] = fieldStr(v);
    }
    sub.unsubscribe();
    return res;
  } finally {
    for (const s of servers) s.close();
    await nc?.close().catch(() => undefined);
    await host?.stop().catch(() => undefined);
    await Promise.all(guests.map((g) => g.stop().catch(() => undefined)));
    await cluster?.stop().catch(() => undefined);
    await nats?.stop().catch(() => undefined);
  }
}
