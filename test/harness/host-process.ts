/**
 * Runs the real host services (dist/vesper-host.mjs, as a user would) in a child
 * process for tests, the demo and benchmarks, and knows when they are ready.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const HOST_BUNDLE = path.join(REPO_ROOT, "dist", "vesper-host.mjs");

export interface HostProcessOptions {
  /** Directory for logs; guests' channel sockets are looked for in <runDir>/guests. */
  runDir: string;
  services?: string[];
  probeDir?: string;
  extraArgs?: string[];
  /** Flags for node itself (e.g. --cpu-prof, which NODE_OPTIONS does not take). */
  nodeArgs?: string[];
  env?: NodeJS.ProcessEnv;
  readyTimeoutMs?: number;
}

export class HostProcess {
  private constructor(
    private readonly child: ChildProcess,
    /** gRPC address of the gateway, when it runs. */
    readonly address: string | undefined,
    readonly logFile: string,
  ) {}

  static async start(o: HostProcessOptions): Promise<HostProcess> {
    if (!existsSync(HOST_BUNDLE)) throw new Error(`${HOST_BUNDLE} is missing: run \`make build\` first`);
    mkdirSync(path.join(o.runDir, "guests"), { recursive: true });
    const logFile = path.join(o.runDir, `vesper-host-${Date.now()}.log`);
    const args = [...(o.nodeArgs ?? []), HOST_BUNDLE, "--socket-dir", path.join(o.runDir, "guests"), "--listen", "127.0.0.1:0"];
    if (o.services !== undefined) args.push("--services", o.services.join(","));
    if (o.probeDir !== undefined) args.push("--probe-dir", o.probeDir);
    args.push(...(o.extraArgs ?? []));
    const child = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, ...o.env } });
    const log = createWriteStream(logFile);
    const lines = createInterface({ input: child.stderr! });
    const ready = new Promise<string | undefined>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`vesper-host not ready in time; see ${logFile}`)), o.readyTimeoutMs ?? 30_000);
      lines.on("line", (line) => {
        log.write(`${line}\n`);
        if (!line.includes("vesper-host ready")) return;
        clearTimeout(timer);
        try {
          resolve((JSON.parse(line) as { grpc?: string }).grpc);
        } catch {
          resolve(undefined);
        }
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`vesper-host exited with ${code} before it was ready; see ${logFile}`));
      });
    });
    const address = await ready;
    return new HostProcess(child, address, logFile);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((r) => this.child.once("exit", () => r()));
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(t);
  }
}
