import type { Metadata, ServerCredentials } from "@grpc/grpc-js";
import type { NatsConnection } from "@nats-io/transport-node";
import type { LiveFeed } from "@vesper/host-common";
import { createLogger, type Logger } from "@vesper/protocol";

/** What the authorization hook sees of a call. */
export interface CallContext {
  /** "VirtInsmod", "WatchEvents", ... */
  readonly method: string;
  readonly metadata: Metadata;
  readonly peer: string;
}

/**
 * Called before every RPC. Throw (or reject with) a VesperError UNAUTHENTICATED or
 * PERMISSION_DENIED to refuse the call; return to let it through.
 */
export type AuthorizeFn = (ctx: CallContext) => void | Promise<void>;

export interface GatewayOptions {
  /** The host bus: requests to probe-loader and the rules service, events from JetStream. */
  nc: NatsConnection;
  /** host:port to listen on (default "127.0.0.1:50051"; port 0 picks a free one). */
  listen?: string;
  log?: Logger;
  /** Default: insecure (loopback). */
  credentials?: ServerCredentials;
  /** Longest wait for probe-loader on VirtInsmod/VirtRmmod (default 30 000 ms); a shorter gRPC deadline wins. */
  loaderTimeoutMs?: number;
  /** Longest wait for probe-loader on ListGuests/ListProbes (default 5 000 ms). */
  listTimeoutMs?: number;
  /** Longest wait for the rules service on ListRules/AddRule/RemoveRule (default 10 000 ms). */
  rulesTimeoutMs?: number;
  /** Events a WatchEvents call may hold between JetStream and the gRPC stream (default 256). */
  watchBufferMessages?: number;
  /** How long close() lets calls finish before cutting them (default 5 000 ms). */
  shutdownGraceMs?: number;
  /** Authorization hook, run before every call (default: allow all). */
  authorize?: AuthorizeFn;
  /** The probe-listener's live feed, when it runs in this process: WatchEvents{live} needs it. */
  live?: LiveFeed;
  /** Records a live watch may hold before it is ended as fallen behind (default 4096). */
  liveMaxQueued?: number;
}

export interface ResolvedGatewayOptions {
  nc: NatsConnection;
  listen: string;
  log: Logger;
  credentials: ServerCredentials | undefined;
  loaderTimeoutMs: number;
  listTimeoutMs: number;
  rulesTimeoutMs: number;
  watchBufferMessages: number;
  shutdownGraceMs: number;
  authorize: AuthorizeFn | undefined;
  live: LiveFeed | undefined;
  liveMaxQueued: number;
}

export const DEFAULT_LISTEN = "127.0.0.1:50051";

export function resolveOptions(o: GatewayOptions): ResolvedGatewayOptions {
  return {
    nc: o.nc,
    listen: o.listen ?? DEFAULT_LISTEN,
    log: o.log ?? createLogger("gateway"),
    credentials: o.credentials,
    loaderTimeoutMs: o.loaderTimeoutMs ?? 30_000,
    listTimeoutMs: o.listTimeoutMs ?? 5_000,
    rulesTimeoutMs: o.rulesTimeoutMs ?? 10_000,
    watchBufferMessages: Math.max(1, o.watchBufferMessages ?? 256),
    shutdownGraceMs: o.shutdownGraceMs ?? 5_000,
    authorize: o.authorize,
    live: o.live,
    liveMaxQueued: Math.max(1, o.liveMaxQueued ?? 4096),
  };
}
