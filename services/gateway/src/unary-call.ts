/**
 * One unary RPC: authorize, run with the call's deadline (capped) and cancellation, map errors to
 * gRPC statuses in one place, and log the outcome.
 */
import type { handleUnaryCall, ServerUnaryCall } from "@grpc/grpc-js";
import type { NatsConnection } from "@nats-io/transport-node";
import type { BusRequestOptions } from "@vesper/host-common";
import { ErrorCode, type Logger } from "@vesper/protocol";
import { callScope, timeoutWithin } from "./call-scope.js";
import type { AuthorizeFn } from "./options.js";
import { toGrpcError } from "./status.js";

export interface CallDeps {
  nc: NatsConnection;
  log: Logger;
  loaderTimeoutMs: number;
  listTimeoutMs: number;
  rulesTimeoutMs: number;
  shutdown: AbortSignal;
  authorize: AuthorizeFn | undefined;
}

export function unary<Req, Res>(
  deps: CallDeps,
  method: string,
  maxMs: number,
  fn: (req: Req, opts: BusRequestOptions) => Promise<Res>,
): handleUnaryCall<Req, Res> {
  return (call: ServerUnaryCall<Req, Res>, callback) => {
    const scope = callScope(call, deps.shutdown);
    const started = Date.now();
    const log = deps.log.child({ rpc: method, peer: call.getPeer() });
    void (async () => {
      try {
        await deps.authorize?.({ method, metadata: call.metadata, peer: call.getPeer() });
        const timeoutMs = timeoutWithin(call.getDeadline(), maxMs);
        const res = await fn(call.request, { timeoutMs, signal: scope.signal });
        log.debug({ ms: Date.now() - started }, "ok");
        callback(null, res);
      } catch (err) {
        if (call.cancelled) {
          log.debug("cancelled by the client");
          return;
        }
        const g = toGrpcError(err);
        const ms = Date.now() - started;
        if (g.vesper.code === ErrorCode.Internal || g.vesper.code === ErrorCode.Malformed) {
          log.error({ code: g.vesper.code, err: g.vesper, ms }, "failed");
        } else {
          log.info({ code: g.vesper.code, reason: g.vesper.message, ms }, "failed");
        }
        callback(g);
      } finally {
        scope.dispose();
      }
    })();
  };
}
