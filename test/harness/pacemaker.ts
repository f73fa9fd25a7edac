/**
 * A real two-node Corosync 3 + Pacemaker 2.1 cluster on this one machine: each node lives in its own
 * network + mount + UTS namespace (ip netns + unshare), held by deploy/pacemaker/node-holder.sh.
 * The recipe is /work/shared/notes/pacemaker-on-one-machine.md: a pre-seeded CIB (dc-deadtime 2s,
 * stonith-enabled false) brings both nodes online in a few seconds.
 *
 * Every command for a node joins the holder's namespaces with nsenter (a fresh `ip netns exec` does
 * not see the node's /dev/shm). `stop()` tears down everything (daemons, namespaces), also after
 * failures; a process exit hook does the same as a last resort.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync, chmodSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { waitFor } from "./wait.js";

const run = promisify(execFile);
const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const HOLDER = path.join(REPO_ROOT, "deploy", "pacemaker", "node-holder.sh");
export const OCF_DIR = path.join(REPO_ROOT, "deploy", "ocf");

export interface ClusterNode {
  name: string;
  netns: string;
  addr: string;
  dir: string;
  holderPid: number;
  /** argv prefix that runs a command inside the node's namespaces. */
  nsenter: string[];
}

export interface ClusterOptions {
  /** Distinguishes concurrent clusters: namespaces are <prefix>1 and <prefix>2. */
  prefix: string;
  runDir: string;
  /** Third octet of 10.99.X.0/24 for the link between the nodes. */
  subnet: number;
}

export function pacemakerInstalled(): boolean {
  return ["corosync", "pacemakerd", "crm_resource", "cibadmin"].every((b) => {
    try {
      execFileSync("sh", ["-c", `command -v ${b}`], { stdio: "ignore" });
      return true;
    } catch {
      return false;
    }
  });
}

/** SIGTERM, then SIGKILL, every process (by pid) still inside network namespace `ns`. */
async function killNetnsPids(ns: string): Promise<void> {
  const pids = async (): Promise<number[]> => {
    const { stdout } = await run("ip", ["netns", "pids", ns]).catch(() => ({ stdout: "" }));
    return stdout.split(/\s+/).filter(Boolean).map(Number).filter((p) => p > 1 && p !== process.pid);
  };
  let left = await pids();
  if (left.length === 0) return;
  for (const p of left) {
    try {
      process.kill(p, "SIGTERM");
    } catch {
      /* gone */
    }
  }
  const deadline = Date.now() + 10_000;
  while ((left = await pids()).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  for (const p of left) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      /* gone */
    }
  }
}

const liveClusters = new Set<PacemakerCluster>();
process.on("exit", () => {
  for (const c of liveClusters) c.killNow();
});

export class PacemakerCluster {
  readonly nodes: ClusterNode[] = [];
  private holders: ChildProcess[] = [];
  private stopped = false;

  private constructor(readonly o: ClusterOptions) {}

  static async start(o: ClusterOptions): Promise<PacemakerCluster> {
    if (!pacemakerInstalled()) {
      throw new Error("corosync/pacemaker missing: apt-get install --no-install-recommends corosync pacemaker pacemaker-cli-utils");
    }
    const c = new PacemakerCluster(o);
    liveClusters.add(c);
    try {
      await c.setup();
      return c;
    } catch (err) {
      await c.stop();
      throw err;
    }
  }

  private async setup(): Promise<void> {
    const { prefix, runDir, subnet } = this.o;
    const names = ["node1", "node2"];
    const nss = [`${prefix}1`, `${prefix}2`];
    const addrs = [`10.99.${subnet}.1`, `10.99.${subnet}.2`];
    // Left over from an interrupted run: end what still runs in those namespaces (by pid), then drop them.
    for (const ns of nss) await killNetnsPids(ns);
    for (const ns of nss) await run("ip", ["netns", "del", ns]).catch(() => undefined);
    for (const ns of nss) {
      await run("ip", ["netns", "add", ns]);
      await run("ip", ["-n", ns, "link", "set", "lo", "up"]);
    }
    const va = `${prefix}v1`;
    const vb = `${prefix}v2`;
    await run("ip", ["link", "add", va, "netns", nss[0]!, "type", "veth", "peer", "name", vb, "netns", nss[1]!]);
    for (let i = 0; i < 2; i++) {
      const dev = i === 0 ? va : vb;
      await run("ip", ["-n", nss[i]!, "addr", "add", `${addrs[i]}/24`, "dev", dev]);
      await run("ip", ["-n", nss[i]!, "link", "set", dev, "up"]);
    }
    await waitFor("the veth link up", async () => {
      const { stdout } = await run("ip", ["-n", nss[0]!, "-o", "link", "show", va]);
      return stdout.includes("LOWER_UP");
    }, { timeoutMs: 10_000, intervalMs: 50 });

    const clusterDir = path.join(runDir, `cluster-${prefix}`);
    rmSync(clusterDir, { recursive: true, force: true });
    const keyFile = path.join(clusterDir, "authkey");
    mkdirSync(clusterDir, { recursive: true });
    await run("corosync-keygen", ["-k", keyFile]);
    const conf = [
      "totem {",
      "  version: 2",
      `  cluster_name: vesper-${prefix}`,
      "  transport: knet",
      "  crypto_cipher: aes256",
      "  crypto_hash: sha256",
      "  token: 1000",
      "}",
      "nodelist {",
      ...names.map((n, i) => `  node {\n    ring0_addr: ${addrs[i]}\n    name: ${n}\n    nodeid: ${i + 1}\n  }`),
      "}",
      "quorum {\n  provider: corosync_votequorum\n  two_node: 1\n}",
      "logging {\n  to_syslog: no\n  to_stderr: yes\n  to_logfile: no\n}",
      "",
    ].join("\n");
    // The seed CIB: dc-deadtime 2s (formation in ~5 s instead of ~23 s), no fencing device.
    const seedCib = path.join(clusterDir, "cib.xml");
    writeFileSync(seedCib, execFileSync("cibadmin", ["--empty"]));
    const env = { ...process.env, CIB_file: seedCib };
    execFileSync("crm_attribute", ["-t", "crm_config", "-n", "dc-deadtime", "-v", "2s"], { env });
    execFileSync("crm_attribute", ["-t", "crm_config", "-n", "stonith-enabled", "-v", "false"], { env });
    execFileSync("crm_attribute", ["-t", "crm_config", "-n", "cluster-recheck-interval", "-v", "1min"], { env });
    rmSync(`${seedCib}.sig`, { force: true });

    for (let i = 0; i < 2; i++) {
      const dir = path.join(clusterDir, names[i]!);
      for (const sub of ["etc-corosync", "lib-pacemaker/cib"]) mkdirSync(path.join(dir, sub), { recursive: true });
      writeFileSync(path.join(dir, "etc-corosync", "corosync.conf"), conf);
      writeFileSync(path.join(dir, "etc-corosync", "authkey"), execFileSync("cat", [keyFile]));
      chmodSync(path.join(dir, "etc-corosync", "authkey"), 0o400);
      const cib = path.join(dir, "lib-pacemaker", "cib", "cib.xml");
      writeFileSync(cib, execFileSync("cat", [seedCib]));
      execFileSync("chown", ["-R", "hacluster:haclient", path.join(dir, "lib-pacemaker")]);
      chmodSync(cib, 0o600);
      const child = spawn("setsid", ["ip", "netns", "exec", nss[i]!, "unshare", "-m", "-u", "--propagation", "private", HOLDER, names[i]!, dir], {
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, OCF_OVERLAY: OCF_DIR },
      });
      this.holders.push(child);
      let err = "";
      child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
      const pid = await new Promise<number>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`holder of ${names[i]} not ready: ${err}`)), 30_000);
        createInterface({ input: child.stdout! }).on("line", (line) => {
          const m = /^HOLDER READY (\d+)/.exec(line);
          if (m) {
            clearTimeout(t);
            resolve(Number(m[1]));
          }
        });
        child.once("exit", (code) => {
          clearTimeout(t);
          reject(new Error(`holder of ${names[i]} exited (${code}): ${err}`));
        });
      });
      this.nodes.push({
        name: names[i]!,
        netns: nss[i]!,
        addr: addrs[i]!,
        dir,
        holderPid: pid,
        nsenter: ["nsenter", "-t", String(pid), "-m", "-n", "-u", "--"],
      });
    }
    await waitFor(
      "both cluster nodes online",
      async () => {
        const out = await this.sh(0, "crm_mon -1 -r -n 2>/dev/null | grep -i '^ *\\* Online\\|Online:'");
        return out.includes("node1") && out.includes("node2");
      },
      { timeoutMs: 90_000, intervalMs: 200 },
    );
  }

  /** Runs argv inside node i's namespaces; resolves with stdout. */
  async exec(i: number, argv: string[], timeoutMs = 30_000): Promise<string> {
    const n = this.nodes[i]!;
    const { stdout } = await run(n.nsenter[0]!, [...n.nsenter.slice(1), ...argv], { timeout: timeoutMs, maxBuffer: 16 << 20 });
    return stdout;
  }

  sh(i: number, script: string, timeoutMs = 30_000): Promise<string> {
    return this.exec(i, ["sh", "-c", script], timeoutMs);
  }

  /** Applies a CIB fragment (e.g. <resources>…</resources>) to the given section. */
  async cibCreate(section: "resources" | "constraints", xml: string): Promise<void> {
    await this.exec(0, ["cibadmin", "--create", "-o", section, "--xml-text", xml]);
  }

  /** Where resource `rsc` is running now (node names), from the status section. */
  async whereRunning(rsc: string): Promise<string[]> {
    const out = await this.exec(0, ["crm_resource", "--locate", "--resource", rsc, "--quiet"]).catch(() => "");
    return out.split(/\s+/).filter((s) => s === "node1" || s === "node2");
  }

  /** The CIB status section (lrm operation history) as XML. */
  async status(): Promise<string> {
    return this.exec(0, ["cibadmin", "--query", "-o", "status"]);
  }

  /** Last resort at process exit: SIGTERM to each holder (its trap stops pacemakerd and corosync). */
  killNow(): void {
    for (const h of this.holders) {
      try {
        if (h.pid && h.exitCode === null) process.kill(h.pid, "SIGTERM");
      } catch {
        /* gone */
      }
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const h of this.holders) {
      if (h.exitCode !== null || h.signalCode !== null) continue;
      const exited = new Promise<void>((r) => h.once("exit", () => r()));
      // `setsid ip netns exec … unshare … node-holder.sh` is one exec chain: the child is the holder
      try {
        h.kill("SIGTERM");
      } catch {
        /* gone */
      }
      const t = setTimeout(() => h.kill("SIGKILL"), 45_000);
      await exited;
      clearTimeout(t);
    }
    for (let i = 1; i <= 2; i++) {
      await killNetnsPids(`${this.o.prefix}${i}`);
      await run("ip", ["netns", "del", `${this.o.prefix}${i}`]).catch(() => undefined);
    }
    liveClusters.delete(this);
  }
}

