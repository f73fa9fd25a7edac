/**
 * A minimal QMP client for watching events: connect to a QEMU monitor's unix
 * socket, wait for the greeting `{"QMP": {...}}`, negotiate with
 * `{"execute": "qmp_capabilities"}`, then report every `{"event": ...}` line.
 * The wire format is one JSON object per line (CRLF from QEMU).
 *
 * QEMU serves one QMP client per monitor at a time: a second client connects
 * but never hears a greeting until the first leaves. So the client gives up
 * after `greetingTimeoutMs` and says so (the bridge retries later), and Vesper
 * wants a monitor of its own (a second `-qmp` option) rather than one that a
 * management tool already holds.
 */
import { createConnection, type Socket } from "node:net";

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** QEMU's host wall clock when it emitted the event. */
  timestamp: { seconds: number; microseconds: number };
}

export interface QmpClientHandlers {
  onEvent(ev: QmpEvent): void;
  /** The connection ended; `ready` tells whether the handshake had completed. */
  onClose(info: { ready: boolean; reason: string }): void;
  onReady?(greeting: Record<string, unknown>): void;
}

export interface QmpClientOptions {
  greetingTimeoutMs?: number;
}

export class QmpClient {
  private socket: Socket | undefined;
  private buf = "";
  private ready = false;
  private closed = false;
  private greetingTimer: NodeJS.Timeout | undefined;
  private readonly pending: Array<{ resolve(v: unknown): void; reject(e: Error): void }> = [];
  private closeReason = "socket closed";

  constructor(
    readonly path: string,
    private readonly h: QmpClientHandlers,
    private readonly o: QmpClientOptions = {},
  ) {}

  get isReady(): boolean {
    return this.ready;
  }

  start(): void {
    const s = createConnection(this.path);
    this.socket = s;
    this.greetingTimer = setTimeout(() => {
      this.closeReason = `no QMP greeting within ${this.o.greetingTimeoutMs ?? 5_000} ms (another client holds this monitor?)`;
      s.destroy();
    }, this.o.greetingTimeoutMs ?? 5_000);
    this.greetingTimer.unref();
    s.setEncoding("utf8");
    s.on("data", (chunk: string) => this.onData(chunk));
    s.on("error", (err) => {
      this.closeReason = err.message;
    });
    s.on("close", () => {
      clearTimeout(this.greetingTimer);
      const wasReady = this.ready;
      this.ready = false;
      for (const p of this.pending.splice(0)) p.reject(new Error(`QMP connection closed: ${this.closeReason}`));
      if (!this.closed) {
        this.closed = true;
        this.h.onClose({ ready: wasReady, reason: this.closeReason });
      }
    });
  }

  /** Sends a command; resolves with its `return`. */
  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const s = this.socket;
    if (s === undefined || s.destroyed) return Promise.reject(new Error("QMP not connected"));
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      s.write(`${JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args })}\n`);
    });
  }

  /** Closes the connection without reporting it (onClose is not called). */
  stop(): void {
    this.closed = true;
    clearTimeout(this.greetingTimer);
    this.socket?.destroy();
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    if (this.buf.length > 1 << 20 && !this.buf.includes("\n")) {
      this.closeReason = "QMP line longer than 1 MiB";
      this.socket?.destroy();
      return;
    }
    let nl: number;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line === "") continue;
      let msg: unknown;
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      if (typeof msg !== "object" || msg === null || Array.isArray(msg)) continue;
      this.onMessage(msg as Record<string, unknown>);
    }
  }

  private onMessage(msg: Record<string, unknown>): void {
    if ("QMP" in msg) {
      clearTimeout(this.greetingTimer);
      this.execute("qmp_capabilities").then(
        () => {
          this.ready = true;
          this.h.onReady?.(msg.QMP as Record<string, unknown>);
        },
        (err: unknown) => {
          this.closeReason = `qmp_capabilities failed: ${(err as Error).message}`;
          this.socket?.destroy();
        },
      );
      return;
    }
    if (typeof msg.event === "string") {
      const ts = msg.timestamp as { seconds?: unknown; microseconds?: unknown } | undefined;
      this.h.onEvent({
        event: msg.event,
        data: typeof msg.data === "object" && msg.data !== null && !Array.isArray(msg.data) ? (msg.data as Record<string, unknown>) : {},
        timestamp: {
          seconds: typeof ts?.seconds === "number" ? ts.seconds : Math.floor(Date.now() / 1000),
          microseconds: typeof ts?.microseconds === "number" ? ts.microseconds : (Date.now() % 1000) * 1000,
        },
      });
      return;
    }
    if ("return" in msg || "error" in msg) {
      const p = this.pending.shift();
      if (p === undefined) return;
      if ("error" in msg) p.reject(new Error(`QMP error: ${JSON.stringify(msg.error)}`));
      else p.resolve(msg.return);
    }
  }
}

/** Flattens QMP event data into Vesper fields: nested objects joined with '.', arrays as JSON. */
export function flattenQmpData(data: Record<string, unknown>, prefix = "", out: Record<string, string | number | boolean> = {}): Record<string, string | number | boolean> {
  for (const [k, v] of Object.entries(data)) {
    const key = prefix === "" ? k : `${prefix}.${k}`;
    if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") out[key] = v;
    else if (v === null || v === undefined) out[key] = "";
    else if (Array.isArray(v)) out[key] = JSON.stringify(v);
    else if (typeof v === "object") flattenQmpData(v as Record<string, unknown>, key, out);
  }
  return out;
}
