/**
 * A private nats-server (with JetStream) on a free loopback port, for tests that
 * must not share subjects with other host services running on the machine's NATS.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { waitFor } from "./wait.js";

export const NATS_SERVER_BIN = process.env.NATS_SERVER_BIN ?? "/usr/sbin/nats-server";

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

async function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.createConnection({ port, host: "127.0.0.1" });
    c.once("connect", () => (c.destroy(), resolve(true)));
    c.once("error", () => resolve(false));
  });
}

export class NatsServer {
  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
    private readonly dir: string,
  ) {}

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  /** `config`: extra nats-server configuration text (authorization blocks etc.). */
  static async start(opts: { config?: string } = {}): Promise<NatsServer> {
    const port = await freePort();
    const dir = mkdtempSync(path.join(tmpdir(), "vesper-nats-"));
    const conf = path.join(dir, "nats.conf");
    writeFileSync(conf, `listen: 127.0.0.1:${port}\njetstream { store_dir: "${dir}/js" }\n${opts.config ?? ""}\n`);
    const child = spawn(NATS_SERVER_BIN, ["-c", conf], { stdio: "ignore" });
    const server = new NatsServer(child, port, dir);
    await waitFor(`nats-server on port ${port}`, () => accepts(port), { timeoutMs: 20_000, intervalMs: 50 });
    return server;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise<void>((r) => this.child.once("exit", () => r()));
      this.child.kill("SIGTERM");
      await exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The same server under the name the credentials tests use; `config` is extra configuration text. */
export class NatsServerProcess {
  private constructor(private readonly server: NatsServer) {}
  static async start(config?: string): Promise<NatsServerProcess> {
    return new NatsServerProcess(await NatsServer.start(config === undefined ? {} : { config }));
  }
  get hostPort(): string {
    return `127.0.0.1:${this.server.port}`;
  }
  get url(): string {
    return this.server.url;
  }
  stop(): Promise<void> {
    return this.server.stop();
  }
}
