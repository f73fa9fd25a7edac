/**
 * Guest frontend configuration: flags, then VESPER_* environment, then the kernel
 * command line (vesper.guest=NAME), then defaults. Read once at start; after that
 * the frontend needs nothing from the guest's disk.
 */
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { parseArgs } from "node:util";
import { checkGuestId, DEFAULT_MAX_FRAME_BYTES } from "@vesper/protocol";
import { DEFAULT_COALESCING, type UrgentWait } from "./tracefs/index.js";

export interface FrontendConfig {
  guestId: string;
  transport: "virtio-serial" | "nats";
  /** virtio-serial port name (found under /dev/virtio-ports or /sys/class/virtio-ports). */
  portName: string;
  natsUrl: string;
  natsUser: string | undefined;
  natsPass: string | undefined;
  natsToken: string | undefined;
  /** Prefix of tracefs instances (<prefix>-<probe>) and kprobe groups (<prefix>_<probe>). */
  instancePrefix: string;
  /** Where tracefs is (default: found in /proc/mounts, else mounted at /sys/kernel/tracing). */
  tracefsRoot: string | undefined;
  maxFrameBytes: number;
  /** How often loaded probes' kernel counters are reported. */
  statsIntervalMs: number;
  /** Set our own oom_score_adj to -1000 (needs root). */
  oomProtect: boolean;
  /**
   * Our nice value (needs root below 0); undefined: left alone. -10 trades guest time for
   * detection speed: the agent preempts ordinary tasks at once when an event wakes it.
   * Measured in the TCG guest: kill -> watcher p50 8.0-9.2 ms at 0, 5.5-6.8 ms at -10
   * (bench/latency), and 7-15 pp more time on a fork/exit storm at -10 (bench/overhead),
   * so the image leaves it at 0 unless told (vesper.nice=).
   */
  nice: number | undefined;
  /**
   * RAM-backed directory for the spool of unacknowledged pages, per instance prefix
   * (a frontend started again adopts its predecessor's probes from it); "" = none.
   */
  spoolDir: string | undefined;
  /**
   * Unacknowledged pages per probe and CPU before the readers wait (default 1024: 4 MiB of
   * 4 KiB pages). At 256, a bulk probe on a syscall-heavy load paused its reader for acks
   * often enough that the kernel's ring overwrote 3-9 % of the events (bench/throughput).
   */
  windowPages: number;
  /** Resend what the host has not acknowledged after this long without progress. */
  ackTimeoutMs: number;
  /**
   * How urgent readers wait for the next page: "epoll" (default), the event loop polls the fd
   * and reads the page itself, or "pool", a blocking read on a libuv pool thread (two thread
   * hops more per wake-up; also used when this Node has no pipe handle to poll with). Measured
   * tracepoint -> data frame (bench/latency): TCG guest 4.9 -> 4.2-4.35 ms, host 1.96 -> 1.57 ms.
   */
  urgentWait: UrgentWait;
  /**
   * Urgent probes under a stream of events: the longest an event waits so that events share a
   * page (the wait starts at 10 ms and doubles while the stream lasts; the first event after a
   * quiet spell never waits). Longer: fewer wake-ups of the agent, later events under load.
   */
  coalesceMaxMs: number;
  /** On SIGTERM, leave the probes loaded and spooled for the next frontend (an upgrade) instead of unloading them. */
  keepProbesOnExit: boolean;
}

export const FRONTEND_USAGE = `usage: guest-frontend [--guest-id ID] [--transport virtio-serial|nats] [--port-name NAME]
       [--nats URL] [--nats-user U --nats-pass P | --nats-token T] [--instance-prefix P] [--tracefs DIR] [--no-oom-protect]
       [--spool-dir DIR (default /run/vesper/spool; "" for none)] [--window-pages N] [--ack-timeout-ms MS] [--keep-probes-on-exit]
       [--urgent-wait pool|epoll] [--coalesce-max-ms MS] [--nice N]`;

function intIn(name: string, v: string | undefined, dflt: number, min: number, max: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
  return n;
}

function optionalInt(name: string, v: string | undefined, min: number, max: number): number | undefined {
  return v === undefined || v === "" ? undefined : intIn(name, v, 0, min, max);
}

function urgentWaitOf(v: string): UrgentWait {
  if (v === "pool" || v === "epoll") return v;
  throw new Error(`--urgent-wait must be pool or epoll, got ${JSON.stringify(v)}`);
}

function cmdlineGuest(): string | undefined {
  try {
    const m = /(?:^|\s)vesper\.guest=(\S+)/.exec(readFileSync("/proc/cmdline", "utf8"));
    return m?.[1];
  } catch {
    return undefined;
  }
}

export function loadFrontendConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): FrontendConfig {
  const { values } = parseArgs({
    args: argv,
    options: {
      "guest-id": { type: "string" },
      transport: { type: "string" },
      "port-name": { type: "string" },
      nats: { type: "string" },
      "nats-user": { type: "string" },
      "nats-pass": { type: "string" },
      "nats-token": { type: "string" },
      "instance-prefix": { type: "string" },
      tracefs: { type: "string" },
      "no-oom-protect": { type: "boolean" },
      "spool-dir": { type: "string" },
      "window-pages": { type: "string" },
      "urgent-wait": { type: "string" },
      "coalesce-max-ms": { type: "string" },
      "ack-timeout-ms": { type: "string" },
      "keep-probes-on-exit": { type: "boolean" },
      nice: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help === true) {
    process.stdout.write(`${FRONTEND_USAGE}\n`);
    process.exit(0);
  }
  const transport = values.transport ?? env.VESPER_TRANSPORT ?? "virtio-serial";
  if (transport !== "virtio-serial" && transport !== "nats") {
    throw new Error(`unknown transport ${JSON.stringify(transport)}: use virtio-serial or nats`);
  }
  const prefix = values["instance-prefix"] ?? env.VESPER_INSTANCE_PREFIX ?? "vesper";
  if (!/^vesper[a-z0-9_]{0,16}$/.test(prefix)) {
    throw new Error(`instance prefix ${JSON.stringify(prefix)} must start with "vesper" and use only [a-z0-9_]`);
  }
  return {
    guestId: checkGuestId(values["guest-id"] ?? env.VESPER_GUEST_ID ?? cmdlineGuest() ?? hostname()),
    transport,
    portName: values["port-name"] ?? env.VESPER_PORT_NAME ?? "org.vesper.0",
    natsUrl: values.nats ?? env.VESPER_NATS_URL ?? "127.0.0.1:4222",
    natsUser: values["nats-user"] ?? env.VESPER_NATS_USER,
    natsPass: values["nats-pass"] ?? env.VESPER_NATS_PASS,
    natsToken: values["nats-token"] ?? env.VESPER_NATS_TOKEN,
    instancePrefix: prefix,
    tracefsRoot: values.tracefs ?? env.VESPER_TRACEFS,
    maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
    statsIntervalMs: 5_000,
    oomProtect: values["no-oom-protect"] !== true && env.VESPER_NO_OOM_PROTECT !== "1",
    spoolDir: spoolDirOf(values["spool-dir"] ?? env.VESPER_SPOOL_DIR ?? "/run/vesper/spool", prefix),
    windowPages: intIn("--window-pages", values["window-pages"] ?? env.VESPER_WINDOW_PAGES, 1024, 1, 65_536),
    ackTimeoutMs: intIn("--ack-timeout-ms", values["ack-timeout-ms"] ?? env.VESPER_ACK_TIMEOUT_MS, 2_000, 50, 600_000),
    keepProbesOnExit: values["keep-probes-on-exit"] === true || env.VESPER_KEEP_PROBES_ON_EXIT === "1",
    urgentWait: urgentWaitOf(values["urgent-wait"] ?? env.VESPER_URGENT_WAIT ?? "epoll"),
    coalesceMaxMs: intIn("--coalesce-max-ms", values["coalesce-max-ms"] ?? env.VESPER_COALESCE_MAX_MS, DEFAULT_COALESCING.maxDelayMs, 10, 10_000),
    nice: optionalInt("--nice", values.nice ?? env.VESPER_NICE, -20, 19),
  };
}

/** Each frontend (instance prefix) has its own spool under the directory. */
function spoolDirOf(dir: string, prefix: string): string | undefined {
  return dir === "" ? undefined : `${dir.replace(/\/+$/, "")}/${prefix}`;
}
