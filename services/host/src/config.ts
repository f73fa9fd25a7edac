/**
 * All host configuration in one typed place: flags win over environment, which
 * wins over defaults. Every service reads its part from here.
 */
import { parseArgs } from "node:util";
import { ErrorCode, VesperError } from "@vesper/protocol";

export const SERVICES = ["loader", "listener", "bridge", "gateway", "rules"] as const;
export type ServiceName = (typeof SERVICES)[number];

export interface HostConfig {
  services: ServiceName[];
  natsUrl: string;
  /** gRPC listen address of the gateway. */
  listen: string;
  /** Directory of *.json probe files (besides the built-ins). */
  probeDir: string | undefined;
  /** Directories the bridge scans for <guest>.sock channel sockets. */
  socketDirs: string[];
  /** Also pick up libvirt domains' org.vesper.0 channels. */
  libvirtDir: string | undefined;
  /** How long the loader holds a guest's idle request before answering with a ping. */
  idleHoldMs: number;
  /** Longest a guest gets to answer a load/unload. */
  commandTimeoutMs: number;
  /** A guest frontend silent this long is reported lost (agent/lost); undefined: 3 idle holds + 2 s. */
  agentLostMs: number | undefined;
  /** Directories of <guest>.qmp QMP sockets the bridge watches (probe vmm); undefined: <socket dir>/../vmm. */
  qmpDirs: string[] | undefined;
  /** Watch rules (JSON, see services/failover/src/rules.ts); the `rules` service runs without one too (API rules). */
  rulesFile: string | undefined;
  /** Let rules added through the API run commands (exec actions); see services/failover/src/rule-policy.ts. */
  rulesAllowExec: boolean;
  /** State files shared with the OCF agent ocf:vesper:guest-service. */
  stateDir: string | undefined;
  /** Bearer tokens of gRPC clients (see services/gateway/src/tokens.ts); none: loopback only, unauthenticated. */
  tokensFile: string | undefined;
  /** Per-guest quota of data bytes per second at the listener (0: none). */
  guestMaxBytesPerSec: number;
}

export const HOST_USAGE = `usage: vesper-host [options]
  --services LIST      comma-separated: ${SERVICES.join(",")} (default: all, in one process)
  --nats URL           NATS server (env VESPER_NATS_URL, default 127.0.0.1:4222)
  --listen ADDR        gRPC address (env VESPER_LISTEN, default 127.0.0.1:50051); off loopback only with --tokens
  --tokens FILE        gRPC bearer tokens and what each client may call (env VESPER_TOKENS_FILE);
                       without it the API is unauthenticated and listens on loopback only
  --rules FILE         watch rules + actions, JSON (env VESPER_RULES_FILE); more can be added through the API
                       (\`vesper rules add\`), kept in the KV bucket vesper_rules
  --rules-allow-exec   let rules added through the API run commands (exec actions; env VESPER_RULES_ALLOW_EXEC=1):
                       whoever may call AddRule can then run commands as this process's user
  --state-dir DIR      state files for ocf:vesper:guest-service (env VESPER_STATE_DIR)
  --probe-dir DIR      probe files (env VESPER_PROBE_DIR)
  --socket-dir DIR     guest channel sockets <guest>.sock; repeatable (env VESPER_SOCKET_DIRS, ':'-separated,
                       default /run/vesper/guests)
  --qmp-dir DIR        QMP sockets <guest>.qmp to watch for VMM events (probe vmm); repeatable (env VESPER_QMP_DIRS,
                       ':'-separated, default <socket dir>/../vmm); QEMU serves one QMP client: give Vesper its own -qmp
  --agent-lost-ms N    report a guest frontend silent this long as agent/lost (default 3 idle holds + 2000)
  --libvirt            also use libvirt channels (env VESPER_LIBVIRT=1)
  --idle-hold-ms N     heartbeat period towards guests (default 2000)
  --command-timeout-ms N  (default 30000)
  --guest-max-bytes-per-sec N  per-guest data quota at the listener, burst of one second
                       (env VESPER_GUEST_MAX_BPS, default 67108864; 0: none)`;

function positiveInt(name: string, v: string | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new VesperError(ErrorCode.InvalidArgument, `${name} must be a positive whole number, got ${JSON.stringify(v)}`);
  return n;
}

function nonNegativeInt(name: string, v: string | undefined, dflt: number): number {
  if (v === undefined || v === "") return dflt;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new VesperError(ErrorCode.InvalidArgument, `${name} must be a whole number >= 0, got ${JSON.stringify(v)}`);
  return n;
}

export function loadHostConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): HostConfig {
  const { values } = parseArgs({
    args: argv,
    options: {
      services: { type: "string" },
      nats: { type: "string" },
      listen: { type: "string" },
      tokens: { type: "string" },
      "probe-dir": { type: "string" },
      rules: { type: "string" },
      "rules-allow-exec": { type: "boolean" },
      "state-dir": { type: "string" },
      "socket-dir": { type: "string", multiple: true },
      "qmp-dir": { type: "string", multiple: true },
      "agent-lost-ms": { type: "string" },
      libvirt: { type: "boolean" },
      "idle-hold-ms": { type: "string" },
      "command-timeout-ms": { type: "string" },
      "guest-max-bytes-per-sec": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help === true) {
    process.stdout.write(`${HOST_USAGE}\n`);
    process.exit(0);
  }
  const services = (values.services ?? SERVICES.join(",")).split(",").map((s) => s.trim()).filter(Boolean);
  for (const s of services) {
    if (!(SERVICES as readonly string[]).includes(s)) {
      throw new VesperError(ErrorCode.InvalidArgument, `unknown service ${JSON.stringify(s)}: choose from ${SERVICES.join(", ")}`);
    }
  }
  const socketDirs = values["socket-dir"] ?? (env.VESPER_SOCKET_DIRS?.split(":").filter(Boolean) ?? ["/run/vesper/guests"]);
  return {
    services: services as ServiceName[],
    natsUrl: values.nats ?? env.VESPER_NATS_URL ?? "127.0.0.1:4222",
    listen: values.listen ?? env.VESPER_LISTEN ?? "127.0.0.1:50051",
    probeDir: values["probe-dir"] ?? env.VESPER_PROBE_DIR,
    socketDirs,
    libvirtDir: values.libvirt === true || env.VESPER_LIBVIRT === "1" ? "/var/lib/libvirt/qemu/channel/target" : undefined,
    idleHoldMs: positiveInt("--idle-hold-ms", values["idle-hold-ms"], 2_000),
    commandTimeoutMs: positiveInt("--command-timeout-ms", values["command-timeout-ms"], 30_000),
    agentLostMs: values["agent-lost-ms"] === undefined ? undefined : positiveInt("--agent-lost-ms", values["agent-lost-ms"], 1),
    qmpDirs: values["qmp-dir"] ?? (env.VESPER_QMP_DIRS === undefined ? undefined : env.VESPER_QMP_DIRS.split(":").filter(Boolean)),
    rulesFile: values.rules ?? (env.VESPER_RULES_FILE || undefined),
    rulesAllowExec: values["rules-allow-exec"] === true || env.VESPER_RULES_ALLOW_EXEC === "1",
    stateDir: values["state-dir"] ?? (env.VESPER_STATE_DIR || undefined),
    tokensFile: values.tokens ?? (env.VESPER_TOKENS_FILE || undefined),
    guestMaxBytesPerSec: nonNegativeInt("--guest-max-bytes-per-sec", values["guest-max-bytes-per-sec"] ?? env.VESPER_GUEST_MAX_BPS, 64 * 1024 * 1024),
  };
}
