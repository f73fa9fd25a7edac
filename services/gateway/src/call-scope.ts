/**
 * Per-call plumbing: an AbortSignal that fires when the client cancels or the
 * gateway shuts down, and the bus timeout a call may use given its gRPC deadline.
 */
import type { Deadline } from "@grpc/grpc-js";
import { ErrorCode, VesperError } from "@vesper/protocol";

/** What gRPC server calls of every kind have in common, for our purposes. */
export interface CancellableCall {
  readonly cancelled: boolean;
  on(event: "cancelled", listener: (reason: string) => void): unknown;
  removeListener(event: "cancelled", listener: (reason: string) => void): unknown;
}

export interface CallScope {
  readonly signal: AbortSignal;
  /** True when the gateway's shutdown, not the client, aborted the call. */
  readonly byShutdown: () => boolean;
  dispose(): void;
}

export function shutdownError(): VesperError {
  return new VesperError(ErrorCode.Unavailable, "the Vesper gateway is shutting down: retry in a moment");
}

export function callScope(call: CancellableCall, shutdown: AbortSignal): CallScope {
  const ac = new AbortController();
  const onCancel = (): void => ac.abort(new VesperError(ErrorCode.Unavailable, "the client cancelled the call"));
  const onShutdown = (): void => ac.abort(shutdownError());
  call.on("cancelled", onCancel);
  shutdown.addEventListener("abort", onShutdown, { once: true });
  if (call.cancelled) onCancel();
  else if (shutdown.aborted) onShutdown();
  return {
    signal: ac.signal,
    byShutdown: () => shutdown.aborted && !call.cancelled,
    dispose() {
      call.removeListener("cancelled", onCancel);
      shutdown.removeEventListener("abort", onShutdown);
    },
  };
}

/** Milliseconds until `deadline`, capped at `maxMs` (Infinity when there is no deadline). */
export function timeoutWithin(deadline: Deadline, maxMs: number, now = Date.now()): number {
  const at = deadline instanceof Date ? deadline.getTime() : deadline;
  if (!Number.isFinite(at)) return maxMs;
  return Math.min(maxMs, Math.max(0, Math.floor(at - now)));
}
