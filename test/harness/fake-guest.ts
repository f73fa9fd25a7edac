/**
 * A hand-driven guest for hostile-input tests: speaks the ring over NATS message
 * by message (or sends raw bytes), so a test can forge, truncate and lie where a
 * real guest frontend never would.
 */
import { randomBytes } from "node:crypto";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { decodeHostMessage, encodeGuestMessage, PROTOCOL_VERSION, ring, subjects } from "@vesper/protocol";

export type CommandHandler = (cmd: ring.Command) => Omit<ring.Result, "commandId">;

export class FakeGuest {
  private seq = 0n;
  private readonly sub: Subscription;
  /** Every down message, decoded (undecodable ones are kept as errors). */
  readonly received: Array<ring.HostMessage | Error> = [];
  private waiters: Array<() => void> = [];
  private handler: CommandHandler | undefined;

  constructor(
    private readonly nc: NatsConnection,
    readonly id: string,
  ) {
    const sub = nc.subscribe(subjects.ringDown(id));
    this.sub = sub;
    void (async () => {
      for await (const m of sub) {
        let msg: ring.HostMessage | Error;
        try {
          msg = decodeHostMessage(m.data);
        } catch (err) {
          msg = err as Error;
        }
        this.received.push(msg);
        for (const w of this.waiters.splice(0)) w();
        if (!(msg instanceof Error) && msg.body?.$case === "command" && this.handler !== undefined) {
          const cmd = msg.body.value;
          this.send("ctl", { $case: "result", value: { ...this.handler(cmd), commandId: cmd.commandId } });
          this.send("ctl", { $case: "idle", value: {} });
        }
      }
    })();
  }

  /** Sends a GuestMessage (`over` overrides version, guest id, seq) or raw bytes. */
  send(path: "ctl" | "data", body: ring.GuestMessage["body"] | Uint8Array, over: Partial<ring.GuestMessage> = {}): bigint {
    const subject = path === "ctl" ? subjects.ringUpCtl(this.id) : subjects.ringUpData(this.id);
    if (body instanceof Uint8Array) {
      this.nc.publish(subject, body);
      return 0n;
    }
    const seq = ++this.seq;
    this.nc.publish(subject, encodeGuestMessage({ version: PROTOCOL_VERSION, guestId: this.id, seq, body, ...over }));
    return over.seq ?? seq;
  }

  hello(loadedProbes: string[] = []): bigint {
    return this.send("ctl", {
      $case: "hello",
      value: ring.Hello.fromPartial({
        kernelRelease: "6.6.6-hostile",
        bootId: randomBytes(8).toString("hex"),
        capabilities: { kprobes: false, cpus: 2, tracepoints: ["sched:sched_process_exit", "signal:signal_deliver"], pageSize: 4096 },
        loadedProbes,
        agentVersion: "fake",
      }),
    });
  }

  /** Answers every command with `handler`, then posts the next idle request. */
  serve(handler: CommandHandler): void {
    this.handler = handler;
    this.send("ctl", { $case: "idle", value: {} });
  }

  /** The first down message (from now on or already received) that `pred` accepts. */
  async next(pred: (m: ring.HostMessage) => boolean, timeoutMs = 10_000, from = 0): Promise<ring.HostMessage> {
    const deadline = Date.now() + timeoutMs;
    for (let i = from; ; ) {
      for (; i < this.received.length; i++) {
        const m = this.received[i];
        if (m !== undefined && !(m instanceof Error) && pred(m)) return m;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`guest ${this.id}: no matching host message within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** The ring error answering `seq`. */
  errorFor(seq: bigint, timeoutMs?: number): Promise<ring.RingError> {
    return this.next((m) => m.replyTo === seq && m.body?.$case === "error", timeoutMs).then((m) => {
      if (m.body?.$case !== "error") throw new Error("unreachable");
      return m.body.value;
    });
  }

  close(): void {
    this.sub.unsubscribe();
  }
}
