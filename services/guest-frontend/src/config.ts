/**
 * Guest frontend configuration: flags, then VESPER_* environment, then the kernel
 * command line (vesper.guest=NAME), then defaults. Read once at start; after that
 * the frontend needs nothing from the guest's disk.
 */
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { parseArgs } from "node:util";
import { checkGuestId, DEFAULT_MAX_FRAME_BYTES } from "@vesper/protocol";

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
}

export const FRONTEND_USAGE = `usage: guest-frontend [--guest-id ID] [--transport virtio-serial|nats] [--port-name NAME]
       [--nats URL] [--nats-user U --nats-pass P | --nats-token T] [--instance-prefix P] [--tracefs DIR] [--no-oom-protect]`;

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
    statsIntervalMs: 1_000,
    oomProtect: values["no-oom-protect"] !== true && env.VESPER_NO_OOM_PROTECT !== "1",
  };
}
