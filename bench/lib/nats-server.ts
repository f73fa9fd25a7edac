/**
 * A private nats-server (JetStream, file store under the run dir) on a free port, so a benchmark's
 * host services never share the bus with other Vesper hosts running on the same machine.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export interface PrivateNats {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
    s.once("error", reject);
  });
}

export async function startNats(runDir: string): Promise<PrivateNats> {
  const port = await freePort();
  const sd = path.join(runDir, "nats");
  mkdirSync(sd, { recursive: true });
  const bin = process.env.NATS_SERVER ?? "/usr/sbin/nats-server";
  const child: ChildProcess = spawn(bin, ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", sd, "-l", path.join(runDir, "nats.log")], {
    stdio: "ignore",
  });
  const up = async (): Promise<boolean> =>
    new Promise((r) => {
      const s = net.createConnection(port, "127.0.0.1");
      s.once("connect", () => (s.destroy(), r(true)));
      s.once("error", () => r(false));
    });
  for (let i = 0; i < 100 && !(await up()); i++) await sleep(50);
  process.on("exit", () => child.kill("SIGKILL"));
  return {
    url: `127.0.0.1:${port}`,
    pid: child.pid!,
    stop: async () => {
      if (child.exitCode !== null) return;
      const done = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await done;
    },
  };
}
