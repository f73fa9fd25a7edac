/**
 * A private nats-server started from a full configuration file (auth tests,
 * restart tests): never the shared one at :4222. It listens on loopback on a
 * free port (-a/-p win over the config's listen line) and JetStream stores in
 * its own temp dir (the config's store_dir is replaced). restart() keeps the
 * port and the store.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import path from "node:path";
import { createInterface } from "node:readline";

const BIN = process.env.NATS_SERVER_BIN ?? "/usr/sbin/nats-server";

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      const port = typeof a === "object" && a !== null ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export class PrivateNats {
  private child: ChildProcess | undefined;
  readonly dir: string;
  readonly configFile: string;
  readonly logFile: string;

  private constructor(
    readonly port: number,
    config: string,
  ) {
    this.dir = mkdtempSync("/tmp/vesper-pnats-");
    this.configFile = path.join(this.dir, "nats.conf");
    this.logFile = path.join(this.dir, "nats.log");
    const store = JSON.stringify(path.join(this.dir, "js"));
    const own = /store_dir\s*:\s*"[^"]*"/.test(config)
      ? config.replace(/store_dir\s*:\s*"[^"]*"/, `store_dir: ${store}`)
      : `${config}\njetstream { store_dir: ${store} }\n`;
    writeFileSync(this.configFile, own, { mode: 0o600 });
  }

  static async start(config: string): Promise<PrivateNats> {
    const s = new PrivateNats(await freePort(), config);
    await s.restart();
    return s;
  }

  get hostPort(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Stops the server (SIGTERM by default; SIGKILL to crash it) and starts it again on the same port and store. */
  async restart(stopSignal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    await this.stop(stopSignal);
    const child = spawn(BIN, ["-c", this.configFile, "-a", "127.0.0.1", "-p", String(this.port)], { stdio: ["ignore", "ignore", "pipe"] });
    this.child = child;
    const log = createWriteStream(this.logFile, { flags: "a" });
    const lines = createInterface({ input: child.stderr! });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nats-server not ready in 15 s; see ${this.logFile}`)), 15_000);
      lines.on("line", (line) => {
        log.write(`${line}\n`);
        if (line.includes("Server is ready")) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`nats-server exited with ${code}; see ${this.logFile}`));
      });
    });
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const c = this.child;
    this.child = undefined;
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((r) => c.once("exit", () => r()));
    c.kill(signal);
    const t = setTimeout(() => c.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(t);
  }
}
