/**
 * Typed request/reply over the NATS bus between host services. Every body is a
 * protobuf message; every reply carries either its payload or a `BusError`.
 *
 * NATS failures become VesperErrors that name the service that is not answering,
 * so a user who sees them knows which process to look at.
 */
import { errors, type NatsConnection } from "@nats-io/transport-node";
import { ErrorCode, VesperError, isErrorCode, toVesperError, type bus } from "@vesper/protocol";
import type { MessageCodec } from "./bus-responder.js";

/** The part of a ts-proto `MessageFns<T>` the bus needs (same shape as bus-responder's). */
export type BusCodec<T> = MessageCodec<T>;

export interface BusRequestOptions {
  /** How long to wait for the reply (default 10 000 ms). */
  timeoutMs?: number;
  /** Aborting rejects at once with `signal.reason`; a late reply is dropped. */
  signal?: AbortSignal;
  /** Who answers this subject, for error messages (default: guessed from the subject). */
  service?: string;
}

export const DEFAULT_BUS_TIMEOUT_MS = 10_000;

const DEFAULT_HINT = "is vesper-host running?";

/** Who answers a subject prefix, and what to do when nobody does. */
const SERVICE_OF_PREFIX: ReadonlyArray<readonly [prefix: string, name: string, hint: string]> = [
  ["vesper.svc.loader.", "probe-loader", DEFAULT_HINT],
  ["vesper.svc.listener.", "probe-listener", DEFAULT_HINT],
  // The rules service is the one users leave out with --services, so say how to run it.
  ["vesper.svc.rules.", "the rules service", "start it with vesper-host (it runs by default; with --services, include rules)"],
];

/** The service expected to answer on a `vesper.svc.*` subject. */
export function serviceOfSubject(subject: string): string {
  for (const [prefix, name] of SERVICE_OF_PREFIX) if (subject.startsWith(prefix)) return name;
  return "the service";
}

/** What to tell a user when nobody answers on `subject`. */
export function noResponderHint(subject: string): string {
  for (const [prefix, , hint] of SERVICE_OF_PREFIX) if (subject.startsWith(prefix)) return hint;
  return DEFAULT_HINT;
}

/**
 * Sends `req` on `subject` and decodes the reply.
 * Rejects with VesperError UNAVAILABLE (no responders, connection closed),
 * TIMEOUT (no reply in time) or MALFORMED (undecodable reply); with `signal.reason` on abort.
 */
export async function request<Req, Res>(
  nc: NatsConnection,
  subject: string,
  reqCodec: BusCodec<Req>,
  resCodec: BusCodec<Res>,
  req: Req,
  opts: BusRequestOptions = {},
): Promise<Res> {
  const { signal } = opts;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_BUS_TIMEOUT_MS;
  const service = opts.service ?? serviceOfSubject(subject);
  signal?.throwIfAborted();
  if (timeoutMs <= 0) {
    throw new VesperError(ErrorCode.Timeout, `no time left to ask ${service} on ${subject}`);
  }

  const pending = nc.request(subject, reqCodec.encode(req).finish(), { timeout: timeoutMs });
  let msgData: Uint8Array;
  if (signal === undefined) {
    msgData = (await pending.catch((err: unknown) => rethrow(err, subject, service, timeoutMs))).data;
  } else {
    // nats.js requests cannot be cancelled: race them against the signal and let
    // the loser settle quietly.
    pending.catch(() => {});
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
    });
    try {
      const msg = await Promise.race([pending, aborted]).catch((err: unknown) =>
        signal.aborted ? Promise.reject(err) : rethrow(err, subject, service, timeoutMs),
      );
      msgData = msg.data;
    } finally {
      if (onAbort) signal.removeEventListener("abort", onAbort);
    }
  }

  try {
    return resCodec.decode(msgData);
  } catch (err) {
    throw new VesperError(ErrorCode.Malformed, `${service} sent an undecodable reply on ${subject}`, { cause: err });
  }
}

function rethrow(err: unknown, subject: string, service: string, timeoutMs: number): never {
  throw natsRequestError(err, subject, service, timeoutMs);
}

/** Maps a nats.js request failure to a VesperError that names the silent service. */
export function natsRequestError(err: unknown, subject: string, service: string, timeoutMs: number): VesperError {
  if (err instanceof VesperError) return err;
  const noResponders =
    err instanceof errors.NoRespondersError ||
    (err instanceof errors.RequestError && err.isNoResponders());
  if (noResponders) {
    return new VesperError(
      ErrorCode.Unavailable,
      `${service} is not answering on ${subject}: ${noResponderHint(subject)}`,
      { cause: err },
    );
  }
  if (err instanceof errors.TimeoutError || (err instanceof errors.RequestError && err.cause instanceof errors.TimeoutError)) {
    return new VesperError(
      ErrorCode.Timeout,
      `${service} did not answer on ${subject} within ${timeoutMs} ms: it may be busy (a guest under TCG emulation is slow) or stuck; retry with a longer timeout or check its log`,
      { cause: err },
    );
  }
  if (err instanceof errors.ClosedConnectionError || err instanceof errors.DrainingConnectionError) {
    return new VesperError(ErrorCode.Unavailable, `cannot ask ${service} on ${subject}: the NATS connection is closed`, {
      cause: err,
    });
  }
  const e = toVesperError(err);
  return new VesperError(e.code, `request to ${service} on ${subject} failed: ${e.message}`, { cause: err });
}

/** Any bus reply: its payload, or an error. */
export interface BusReply<T> {
  error?: bus.BusError | undefined;
  response?: T | undefined;
}

/**
 * Unpacks a bus reply: throws its BusError as a VesperError, or returns the payload.
 * Lines after the first line of `BusError.message` become `VesperError.details`.
 */
export function unpackReply<T>(reply: BusReply<T>, what = "the reply"): T {
  if (reply.error !== undefined) throw fromBusError(reply.error);
  if (reply.response === undefined) {
    throw new VesperError(ErrorCode.Malformed, `${what} carries neither a response nor an error`);
  }
  return reply.response;
}

/** BusError → VesperError, the inverse of bus-responder's `busError` (unknown codes become INTERNAL). */
export function fromBusError(e: bus.BusError): VesperError {
  const [first = "", ...details] = e.message.split("\n");
  if (isErrorCode(e.code)) return new VesperError(e.code, first, { details });
  return new VesperError(ErrorCode.Internal, `${e.code || "error"}: ${first}`, { details });
}

/** `request` + `unpackReply`: the payload of a `{error, response}` reply. */
export async function call<Req, Res>(
  nc: NatsConnection,
  subject: string,
  reqCodec: BusCodec<Req>,
  replyCodec: BusCodec<BusReply<Res>>,
  req: Req,
  opts: BusRequestOptions = {},
): Promise<Res> {
  const reply = await request(nc, subject, reqCodec, replyCodec, req, opts);
  return unpackReply(reply, `the reply of ${opts.service ?? serviceOfSubject(subject)} on ${subject}`);
}
