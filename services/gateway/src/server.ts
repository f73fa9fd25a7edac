/**
 * The gateway: Vesper's public gRPC API in front of the host bus.
 */
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { ensureEventsStream } from "@vesper/host-common";
import { api, ErrorCode, VesperError } from "@vesper/protocol";
import { shutdownError } from "./call-scope.js";
import { loaderCalls } from "./loader-calls.js";
import { resolveOptions, type GatewayOptions } from "./options.js";
import { rulesCalls } from "./rules-calls.js";
import { watchEventsHandler } from "./watch-events.js";

export interface Gateway {
  /** The address actually bound, "host:port" (useful with port 0). */
  readonly address: string;
  /**
   * Stops accepting calls, ends open WatchEvents streams with UNAVAILABLE, lets
   * unary calls finish for up to `shutdownGraceMs`, then cuts what is left.
   * Never rejects; calling it twice is harmless. The NATS connection is the caller's.
   */
  close(): Promise<void>;
}

export async function startGateway(options: GatewayOptions): Promise<Gateway> {
  const o = resolveOptions(options);
  const log = o.log;
  const jsm = await jetstreamManager(o.nc);
  await ensureEventsStream(jsm, log);

  const shutdown = new AbortController();
  const server = new Server();
  const deps = {
    nc: o.nc,
    log,
    loaderTimeoutMs: o.loaderTimeoutMs,
    listTimeoutMs: o.listTimeoutMs,
    rulesTimeoutMs: o.rulesTimeoutMs,
    shutdown: shutdown.signal,
    authorize: o.authorize,
  };
  const impl: api.VesperServer = {
    ...loaderCalls(deps),
    ...rulesCalls(deps),
    watchEvents: watchEventsHandler({
      js: jetstream(o.nc),
      jsm,
      log,
      bufferMessages: o.watchBufferMessages,
      shutdown: shutdown.signal,
      authorize: o.authorize,
      live: o.live,
      liveMaxQueued: o.liveMaxQueued,
    }),
  };
  server.addService(api.VesperService, impl);

  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(o.listen, o.credentials ?? ServerCredentials.createInsecure(), (err, p) => {
      if (err) {
        reject(
          new VesperError(ErrorCode.Unavailable, `cannot listen on ${o.listen}: ${err.message}`, { cause: err }),
        );
      } else resolve(p);
    });
  });
  const address = `${hostOf(o.listen)}:${port}`;
  log.info({ address }, "gateway listening");

  let closing: Promise<void> | undefined;
  return {
    address,
    close() {
      closing ??= (async () => {
        shutdown.abort(shutdownError());
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            log.warn("calls still open after the grace period: cutting them");
            server.forceShutdown();
            resolve();
          }, o.shutdownGraceMs);
          timer.unref();
          server.tryShutdown(() => {
            clearTimeout(timer);
            resolve();
          });
        });
        log.info({ address }, "gateway stopped");
      })();
      return closing;
    },
  };
}

function hostOf(listen: string): string {
  const i = listen.lastIndexOf(":");
  return i < 0 ? listen : listen.slice(0, i);
}
