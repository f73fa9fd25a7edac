/**
 * One way for host services to connect to NATS: named, reconnecting forever, and
 * logging every status change so an operator can see the bus come and go.
 */
import { connect, type NatsConnection, type NodeConnectionOptions } from "@nats-io/transport-node";
import type { Logger } from "@vesper/protocol";

export const DEFAULT_NATS_URL = "127.0.0.1:4222";

export interface NatsConnectOptions {
  /** Connection name shown by the server (`nats server report connections`), e.g. "vesper-gateway". */
  name: string;
  log: Logger;
  /** Default: env VESPER_NATS_URL, else 127.0.0.1:4222. */
  servers?: string | string[];
  /** Keep retrying when the first connect fails too (default false: fail fast). */
  waitOnFirstConnect?: boolean;
  /** Anything else nats.js takes (auth, tls...); wins over the defaults above. */
  extra?: Partial<NodeConnectionOptions>;
}

/**
 * Takes credentials out of server URLs (nats.js ignores them there):
 * nats://user:pass@host:port gives user/pass, nats://token@host:port a token.
 * The URLs come back without them, so they never reach a log line.
 */
export function splitCredentials(servers: string | string[]): {
  servers: string[];
  auth: { user: string; pass: string } | { token: string } | undefined;
} {
  let auth: { user: string; pass: string } | { token: string } | undefined;
  const out = (Array.isArray(servers) ? servers : servers.split(",")).map((raw) => {
    const s = raw.trim();
    const m = /^([a-z]+:\/\/)?([^@/]*)@(.*)$/i.exec(s);
    if (m === null) return s;
    const [, scheme = "", cred = "", rest = ""] = m;
    const colon = cred.indexOf(":");
    auth =
      colon < 0
        ? { token: decodeURIComponent(cred) }
        : { user: decodeURIComponent(cred.slice(0, colon)), pass: decodeURIComponent(cred.slice(colon + 1)) };
    return `${scheme}${rest}`;
  });
  return { servers: out, auth };
}

export async function connectNats(opts: NatsConnectOptions): Promise<NatsConnection> {
  const { servers, auth } = splitCredentials(opts.servers ?? process.env.VESPER_NATS_URL ?? DEFAULT_NATS_URL);
  const log = opts.log.child({ nats: opts.name });
  const nc = await connect({
    servers,
    ...auth,
    name: opts.name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 1000,
    waitOnFirstConnect: opts.waitOnFirstConnect ?? false,
    // nats.js otherwise builds two Error objects (with stack traces) up front for every
    // request, JetStream publishes included, in case one fails: a tenth of the host
    // services' CPU under many guests. Our errors carry their own context.
    noAsyncTraces: true,
    ...opts.extra,
  });
  log.info({ server: nc.getServer() }, "connected to NATS");
  void logStatus(nc, log);
  return nc;
}

async function logStatus(nc: NatsConnection, log: Logger): Promise<void> {
  try {
    for await (const s of nc.status()) {
      switch (s.type) {
        case "disconnect":
          log.warn({ server: s.server }, "NATS disconnected");
          break;
        case "reconnecting":
          log.debug("NATS reconnecting");
          break;
        case "reconnect":
          log.info({ server: s.server }, "NATS reconnected");
          break;
        case "error":
          log.error({ err: s.error }, "NATS error");
          break;
        case "staleConnection":
          log.warn("NATS connection is stale");
          break;
        case "slowConsumer":
          log.warn({ subject: s.sub.getSubject(), pending: s.pending }, "NATS slow consumer");
          break;
        case "ldm":
          log.warn({ server: s.server }, "NATS server entering lame duck mode");
          break;
        case "close":
          break;
        default:
          log.trace({ status: s.type }, "NATS status");
      }
    }
  } catch (err) {
    log.debug({ err }, "NATS status iterator ended");
  }
  const err = await nc.closed();
  if (err) log.error({ err }, "NATS connection closed with an error");
  else log.info("NATS connection closed");
}
