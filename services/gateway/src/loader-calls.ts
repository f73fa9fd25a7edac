/**
 * The unary RPCs: each validates its request and forwards it to probe-loader over
 * the bus, with the call's deadline and cancellation carried through.
 */
import type { handleUnaryCall, ServerUnaryCall } from "@grpc/grpc-js";
import type { NatsConnection } from "@nats-io/transport-node";
import { call as busCall, type BusRequestOptions } from "@vesper/host-common";
import { api, bus, checkGuestId, checkProbeName, ErrorCode, subjects, type Logger } from "@vesper/protocol";
import { callScope, timeoutWithin } from "./call-scope.js";
import type { AuthorizeFn } from "./options.js";
import { toGrpcError } from "./status.js";

export interface CallDeps {
  nc: NatsConnection;
  log: Logger;
  loaderTimeoutMs: number;
  listTimeoutMs: number;
  shutdown: AbortSignal;
  authorize: AuthorizeFn | undefined;
}

type LoaderServer = Pick<api.VesperServer, "virtInsmod" | "virtRmmod" | "listGuests" | "listProbes">;

export function loaderCalls(deps: CallDeps): LoaderServer {
  const { nc } = deps;
  return {
    virtInsmod: unary(deps, "VirtInsmod", deps.loaderTimeoutMs, (req: api.VirtInsmodRequest, o) => {
      checkGuestId(req.guest);
      checkProbeName(req.probe);
      return busCall(nc, subjects.loaderInsmod, api.VirtInsmodRequest, bus.InsmodReply, req, o);
    }),
    virtRmmod: unary(deps, "VirtRmmod", deps.loaderTimeoutMs, (req: api.VirtRmmodRequest, o) => {
      checkGuestId(req.guest);
      checkProbeName(req.probe);
      return busCall(nc, subjects.loaderRmmod, api.VirtRmmodRequest, bus.RmmodReply, req, o);
    }),
    listGuests: unary(deps, "ListGuests", deps.listTimeoutMs, (req: api.ListGuestsRequest, o) =>
      busCall(nc, subjects.loaderGuests, api.ListGuestsRequest, bus.GuestsReply, req, o),
    ),
    listProbes: unary(deps, "ListProbes", deps.listTimeoutMs, (req: api.ListProbesRequest, o) =>
      busCall(nc, subjects.loaderProbes, api.ListProbesRequest, bus.ProbesReply, req, o),
    ),
  };
}

function unary<Req, Res>(
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
