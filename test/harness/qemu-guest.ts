// QEMU (TCG) test guest for the end-to-end suites, the demo and the benchmarks.
//
// The guest image (kernel + busybox initramfs with node and the guest frontend) is built by
// `make guest-image` (deploy/guest-image/build.sh) into <repo>/.cache/guest.
//
// Sockets, all under opts.runDir:
//   guests/<name>.sock   virtio-serial port org.vesper.0 (chardev socket, server=on,wait=off)
//   qmp/<name>.qmp       QMP (server=on,wait=off)
//   console/<name>.sock  ttyS0 (server=on; this class is its first client, later ones may attach
//                        after it disconnects). Everything printed goes to console/<name>.log.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, rmSync, createWriteStream, type WriteStream } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";
import { StringDecoder } from "node:string_decoder";

export interface QemuGuestOptions {
  name: string;
  runDir: string;
  services?: string[];
  memoryMb?: number;
  cpus?: number;
  /** Directory holding vmlinuz and initramfs.img. Default: $VESPER_GUEST_IMAGE_DIR or <repo>/.cache/guest */
  imageDir?: string;
  /** vesper.debug=1: the frontend logs to ttyS0 and kernel messages stay on the console. */
  debug?: boolean;
  /** Extra QEMU arguments, appended last. */
  extraArgs?: string[];
  /** Start the guest frontend at boot (default true). false adds vesper.frontend=0. */
  frontend?: boolean;
  /** Extra kernel command line words. */
  appendExtra?: string[];
  /** Deadline for the console shell to answer (default 120 s). */
  bootTimeoutMs?: number;
}

export interface ExecOptions {
  timeoutMs?: number;
  /**
   * Remove kernel console messages ("[    3.0727] ...") interleaved with the output (default true).
   * Pass false for commands whose own output looks like that, e.g. `dmesg`. After boot, the init
   * lowers the console loglevel to 1 (except with debug) so such messages are rare anyway.
   */
  stripKernelMessages?: boolean;
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const PANIC_ARG = "panic=1"; // pvpanic fires from the panic notifier first; reboot then exits QEMU (-no-reboot)
const KERNEL_MSG = /\[\s*\d+\.\d{6}\] [^\n]*\n/g;
const SUN_PATH_MAX = 107;

/** Paths of the guest image; throws if `make guest-image` has not been run. */
export async function ensureGuestImage(imageDir?: string): Promise<{ kernel: string; initrd: string }> {
  const dir = imageDir ?? process.env.VESPER_GUEST_IMAGE_DIR ?? path.join(REPO_ROOT, ".cache", "guest");
  const kernel = path.join(dir, "vmlinuz");
  const initrd = path.join(dir, "initramfs.img");
  const missing = [kernel, initrd].filter((f) => !existsSync(f));
  if (missing.length > 0) {
    throw new Error(
      `QEMU guest image not found (${missing.join(", ")}). Run \`make guest-image\` ` +
        `(bash deploy/guest-image/build.sh) first.`,
    );
  }
  return { kernel, initrd };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function connectUnix(p: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(p);
    s.once("connect", () => {
      s.removeAllListeners("error");
      resolve(s);
    });
    s.once("error", reject);
  });
}

async function connectWithRetry(p: string, deadline: number, isAlive: () => boolean): Promise<net.Socket> {
  let lastErr: unknown;
  while (Date.now() < deadline) {
    if (!isAlive()) throw new Error(`QEMU exited before ${p} accepted a connection`);
    try {
      return await connectUnix(p);
    } catch (err) {
      lastErr = err;
      await sleep(20);
    }
  }
  throw new Error(`timed out connecting to ${p}: ${String(lastErr)}`);
}

function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

const liveGuests = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const c of liveGuests) {
      try {
        c.kill("SIGKILL");
      } catch {
        /* already gone */
      }
    }
  });
}

export class QemuGuest {
  readonly name: string;
  readonly runDir: string;
  readonly channelSocket: string;
  readonly qmpSocket: string;
  readonly consoleSocket: string;
  readonly consoleLogPath: string;
  readonly qemuArgs: readonly string[];
  /** Milliseconds from spawn until the console shell answered. */
  bootMs = 0;
  /** Resolves when QEMU exits. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private readonly proc: ChildProcess;
  private console: net.Socket | undefined;
  private consoleBuf = "";
  private readonly consoleDecoder = new StringDecoder("utf8");
  private readonly logStream: WriteStream;
  private consoleWaiters: Array<() => void> = [];
  private execChain: Promise<unknown> = Promise.resolve();
  private qmpSock: net.Socket | undefined;
  private qmpBuf = "";
  private qmpPending: Array<{ resolve: (v: unknown) => void; reject: (e: Error) => void }> = [];
  private readonly qmpEventLog: QmpEvent[] = [];
  private qmpEventWaiters: Array<() => void> = [];
  private stderr = "";
  private alive = true;
  private stopping: Promise<void> | undefined;

  private constructor(opts: QemuGuestOptions, kernel: string, initrd: string) {
    this.name = opts.name;
    this.runDir = path.resolve(opts.runDir);
    this.channelSocket = path.join(this.runDir, "guests", `${opts.name}.sock`);
    this.qmpSocket = path.join(this.runDir, "qmp", `${opts.name}.qmp`);
    this.consoleSocket = path.join(this.runDir, "console", `${opts.name}.sock`);
    this.consoleLogPath = path.join(this.runDir, "console", `${opts.name}.log`);
    for (const p of [this.channelSocket, this.qmpSocket, this.consoleSocket]) {
      if (Buffer.byteLength(p) > SUN_PATH_MAX) {
        throw new Error(`unix socket path too long (${Buffer.byteLength(p)} > ${SUN_PATH_MAX}): ${p}; use a shorter runDir`);
      }
      mkdirSync(path.dirname(p), { recursive: true });
      rmSync(p, { force: true });
    }
    this.logStream = createWriteStream(this.consoleLogPath, { flags: "w" });

    const append = [
      "console=ttyS0",
      "quiet",
      "loglevel=3",
      PANIC_ARG,
      `vesper.guest=${opts.name}`,
    ];
    if (opts.services && opts.services.length > 0) append.push(`vesper.services=${opts.services.join(",")}`);
    if (opts.debug) append.push("vesper.debug=1");
    if (opts.frontend === false) append.push("vesper.frontend=0");
    if (opts.appendExtra) append.push(...opts.appendExtra);

    this.qemuArgs = [
      // Named threads ("CPU 0/TCG"): benchmarks pin the vCPU thread apart.
      "-name", `${opts.name},debug-threads=on`,
      "-machine", "q35,accel=tcg",
      "-m", String(opts.memoryMb ?? 512),
      "-smp", String(opts.cpus ?? 1),
      "-cpu", "qemu64,+rdrand",
      "-nodefaults", "-no-user-config",
      "-nic", "none",
      "-device", "virtio-serial-pci",
      "-chardev", `socket,id=ch0,path=${this.channelSocket},server=on,wait=off`,
      "-device", "virtserialport,chardev=ch0,name=org.vesper.0,id=vport0",
      "-device", "pvpanic",
      "-qmp", `unix:${this.qmpSocket},server=on,wait=off`,
      // wait=on: QEMU waits for this class to connect, so no boot output is lost
      "-chardev", `socket,id=con0,path=${this.consoleSocket},server=on,wait=on`,
      "-serial", "chardev:con0",
      "-display", "none",
      "-no-reboot",
      "-kernel", kernel,
      "-initrd", initrd,
      "-append", append.join(" "),
      ...(opts.extraArgs ?? []),
    ];
    this.proc = spawn("qemu-system-x86_64", this.qemuArgs, { stdio: ["ignore", "pipe", "pipe"] });
    liveGuests.add(this.proc);
    installExitHook();
    this.proc.stdout?.on("data", (d: Buffer) => (this.stderr += d.toString()));
    this.proc.stderr?.on("data", (d: Buffer) => (this.stderr += d.toString()));
    this.exited = new Promise((resolve) => {
      this.proc.once("exit", (code, signal) => {
        this.alive = false;
        liveGuests.delete(this.proc);
        this.wakeConsole();
        this.wakeQmpEvents();
        for (const p of this.qmpPending.splice(0)) p.reject(new Error("QEMU exited"));
        resolve({ code, signal });
      });
      this.proc.once("error", (err) => {
        this.stderr += String(err);
        this.alive = false;
        liveGuests.delete(this.proc);
        this.wakeConsole();
        resolve({ code: -1, signal: null });
      });
    });
  }

  static async start(opts: QemuGuestOptions): Promise<QemuGuest> {
    const { kernel, initrd } = await ensureGuestImage(opts.imageDir);
    const t0 = Date.now();
    const g = new QemuGuest(opts, kernel, initrd);
    const deadline = t0 + (opts.bootTimeoutMs ?? 120_000);
    try {
      await g.attachConsole(deadline);
      await g.attachQmp(deadline);
      await g.waitForShell(deadline);
      g.bootMs = Date.now() - t0;
      return g;
    } catch (err) {
      const tail = g.consoleBuf.slice(-2000);
      await g.stop().catch(() => undefined);
      throw new Error(
        `guest ${opts.name} did not come up: ${(err as Error).message}\n` +
          `qemu stderr: ${g.stderr.trim()}\nconsole tail:\n${tail}`,
      );
    }
  }

  /** Everything the console printed so far (also in console/<name>.log). */
  get consoleLog(): string {
    return this.consoleBuf;
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  get running(): boolean {
    return this.alive;
  }

  /** QMP events received so far (GUEST_PANICKED, SHUTDOWN, ...). */
  get qmpEvents(): readonly QmpEvent[] {
    return this.qmpEventLog;
  }

  // ---- console ------------------------------------------------------------------------------

  private async attachConsole(deadline: number): Promise<void> {
    const s = await connectWithRetry(this.consoleSocket, deadline, () => this.alive);
    this.console = s;
    s.on("data", (d: Buffer) => {
      const text = this.consoleDecoder.write(d);
      this.consoleBuf += text;
      this.logStream.write(d);
      this.wakeConsole();
    });
    s.on("error", () => undefined);
    s.on("close", () => {
      this.console = undefined;
      this.wakeConsole();
    });
  }

  private wakeConsole(): void {
    for (const w of this.consoleWaiters.splice(0)) w();
  }

  /** Waits until pred(consoleLog) is truthy; returns its value. */
  async waitForConsole<T>(pred: (log: string) => T | undefined | false | null, timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = pred(this.consoleBuf);
      if (v) return v;
      if (!this.alive) throw new Error("QEMU exited");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("timed out waiting for console output");
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 1000));
        this.consoleWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  private writeConsole(text: string): void {
    if (!this.console) throw new Error("console not connected");
    this.console.write(text);
  }

  private async waitForShell(deadline: number): Promise<void> {
    const prompt = `${this.name}# `;
    await this.waitForConsole((log) => log.includes(prompt), deadline - Date.now());
    // The prompt is there; make sure the shell really executes commands (retry: early input may
    // be lost while the tty is being opened).
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("console shell did not answer");
      try {
        const r = await this.execNow("echo ok", { timeoutMs: Math.min(left, 10_000) });
        if (r.output.trim() === "ok") return;
      } catch (err) {
        if (!this.alive) throw err;
      }
    }
  }

  /**
   * Runs a command in the console's (persistent) shell and returns its output and exit status.
   * The command is eval'ed in that shell: `cd`, variables and `exit` affect it (use `(exit 3)` or
   * `sh -c` for a status). Calls are serialized.
   */
  exec(cmd: string, opts: ExecOptions = {}): Promise<{ output: string; status: number }> {
    const run = this.execChain.then(() => this.execNow(cmd, opts));
    this.execChain = run.catch(() => undefined);
    return run;
  }

  private async execNow(cmd: string, opts: ExecOptions): Promise<{ output: string; status: number }> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const strip = opts.stripKernelMessages ?? true;
    const id = randomBytes(6).toString("hex");
    const b64 = Buffer.from(cmd, "utf8").toString("base64");
    const deadline = Date.now() + timeoutMs;
    // busybox line editing caps a line at ~1 KiB and the tty buffers 4 KiB: long commands go
    // through a temp file, one acknowledged chunk at a time.
    let src: string;
    if (b64.length > 700) {
      const file = `/tmp/.vx_${id}`;
      const chunks = b64.match(/.{1,600}/g) ?? [];
      for (let i = 0; i < chunks.length; i++) {
        const ack = `__VC_${id}_${i}__`;
        const from = this.consoleBuf.length;
        this.writeConsole(`echo ${chunks[i]} >>${file}; echo __VC""_${id}_${i}__\n`);
        await this.waitForConsole(
          (log) => this.clean(log.slice(from), strip).includes(ack),
          Math.max(1, deadline - Date.now()),
        );
      }
      src = `"$(base64 -d ${file}; rm -f ${file})"`;
    } else {
      src = `"$(echo ${b64} | base64 -d)"`;
    }
    // Syntax errors abort the rest of an interactive line, so check first with sh -n.
    const line =
      `__vc=${src}; echo __VB""_${id}__; if sh -n -c "$__vc" 2>/dev/null; then eval "$__vc"; ` +
      `else sh -n -c "$__vc"; fi; echo __VE""_${id}_$?__\n`;
    const begin = `__VB_${id}__`;
    const endRe = new RegExp(`__VE_${id}_(\\d+)__`);
    const from = this.consoleBuf.length;
    this.writeConsole(line);
    let result: { output: string; status: number } | undefined;
    try {
      result = await this.waitForConsole((log) => {
        const text = this.clean(log.slice(from), strip);
        const b = text.indexOf(begin);
        if (b < 0) return undefined;
        const afterBegin = text.indexOf("\n", b);
        if (afterBegin < 0) return undefined;
        const rest = text.slice(afterBegin + 1);
        const m = endRe.exec(rest);
        if (!m) return undefined;
        return { output: rest.slice(0, m.index), status: Number(m[1]) };
      }, timeoutMs);
    } catch (err) {
      throw new Error(`exec on ${this.name} failed (${(err as Error).message}): ${cmd.slice(0, 200)}`);
    }
    return result;
  }

  private clean(text: string, stripKernel: boolean): string {
    let t = text.replace(/\r/g, "");
    if (stripKernel) t = t.replace(KERNEL_MSG, "");
    return t;
  }

  // ---- QMP ----------------------------------------------------------------------------------

  private async attachQmp(deadline: number): Promise<void> {
    const s = await connectWithRetry(this.qmpSocket, deadline, () => this.alive);
    this.qmpSock = s;
    let greeted: () => void = () => undefined;
    const greeting = new Promise<void>((r) => (greeted = r));
    let sawGreeting = false;
    s.on("data", (d: Buffer) => {
      this.qmpBuf += d.toString("utf8");
      let nl: number;
      while ((nl = this.qmpBuf.indexOf("\n")) >= 0) {
        const line = this.qmpBuf.slice(0, nl).trim();
        this.qmpBuf = this.qmpBuf.slice(nl + 1);
        if (!line) continue;
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        if ("QMP" in msg) {
          sawGreeting = true;
          greeted();
        } else if ("event" in msg) {
          this.qmpEventLog.push(msg as unknown as QmpEvent);
          this.wakeQmpEvents();
        } else if ("return" in msg || "error" in msg) {
          const p = this.qmpPending.shift();
          if (!p) continue;
          if ("error" in msg) p.reject(new Error(`QMP error: ${JSON.stringify(msg.error)}`));
          else p.resolve(msg.return);
        }
      }
    });
    s.on("error", () => undefined);
    s.on("close", () => {
      this.qmpSock = undefined;
      for (const p of this.qmpPending.splice(0)) p.reject(new Error("QMP connection closed"));
      this.wakeQmpEvents();
    });
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        greeting,
        new Promise<void>((_, reject) => {
          timer = setTimeout(() => {
            if (!sawGreeting) reject(new Error("no QMP greeting"));
          }, Math.max(1, deadline - Date.now()));
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
    await this.qmp("qmp_capabilities");
  }

  /** Sends a QMP command and returns its `return` value. */
  qmp(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    const s = this.qmpSock;
    if (!s) return Promise.reject(new Error("QMP not connected"));
    return new Promise((resolve, reject) => {
      this.qmpPending.push({ resolve, reject });
      s.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + "\n");
    });
  }

  private wakeQmpEvents(): void {
    for (const w of this.qmpEventWaiters.splice(0)) w();
  }

  /** Waits for a QMP event (one already received counts, unless `after` excludes it). */
  async waitForQmpEvent(event: string, timeoutMs: number, after = 0): Promise<QmpEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.qmpEventLog.slice(after).find((e) => e.event === event);
      if (found) return found;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for QMP event ${event}`);
      if (!this.alive && !this.qmpSock) throw new Error(`QEMU exited without QMP event ${event}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 1000));
        this.qmpEventWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  /** Quits QEMU (QMP quit, then SIGTERM, then SIGKILL). Idempotent. */
  stop(): Promise<void> {
    if (!this.stopping) this.stopping = this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    const waitExit = async (ms: number): Promise<boolean> => {
      let timer: NodeJS.Timeout | undefined;
      const r = await Promise.race([
        this.exited.then(() => true),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms))),
      ]);
      clearTimeout(timer);
      return r;
    };
    if (this.alive) {
      if (this.qmpSock) this.qmp("quit").catch(() => undefined);
      if (!(await waitExit(5000)) && this.alive) {
        this.proc.kill("SIGTERM");
        if (!(await waitExit(5000)) && this.alive) {
          this.proc.kill("SIGKILL");
          await this.exited;
        }
      }
    }
    this.console?.destroy();
    this.qmpSock?.destroy();
    await new Promise<void>((r) => this.logStream.end(r));
    for (const p of [this.channelSocket, this.qmpSocket, this.consoleSocket]) rmSync(p, { force: true });
  }
}

export { shQuote };
