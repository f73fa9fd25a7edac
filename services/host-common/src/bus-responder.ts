/**
 * The serving side of the host services' request/reply RPCs over NATS. Handlers
 * return a payload or throw; a thrown error becomes the reply's BusError, so the
 * caller always gets an answer with a code instead of a timeout.
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { toVesperError, type bus, type Logger } from "@vesper/protocol";

export interface MessageCodec<T> {
  decode(bytes: Uint8Array): T;
  encode(msg: T): { finish(): Uint8Array };
}

export function busError(err: unknown): bus.BusError {
  const e = toVesperError(err);
  const details = e.details.length > 0 ? `\n${e.details.join("\n")}` : "";
  return { code: e.code, message: e.message + details };
}

/**
 * Serves one subject. `makeReply` builds the reply message from either the result or an error.
 * Requests are handled concurrently; each gets exactly one reply.
 */
export function serve<Req, Res, Reply>(
  nc: NatsConnection,
  subject: string,
  reqCodec: { decode(bytes: Uint8Array): Req },
  replyCodec: { encode(msg: Reply): { finish(): Uint8Array } },
  makeReply: (outcome: { ok: Res } | { error: bus.BusError }) => Reply,
  handler: (req: Req) => Promise<Res>,
  log: Logger,
  opts: { queue?: string } = {},
): Subscription {
  const sub = nc.subscribe(subject, opts.queue !== undefined ? { queue: opts.queue } : {});
  void (async () => {
    for await (const m of sub) {
      void (async () => {
        let reply: Reply;
        try {
          const res = await handler(reqCodec.decode(m.data));
          reply = makeReply({ ok: res });
        } catch (err) {
          const error = busError(err);
          if (error.code === "INTERNAL") log.error({ err, subject }, "request failed");
          reply = makeReply({ error });
        }
        try {
          m.respond(replyCodec.encode(reply).finish());
        } catch (err) {
          // e.g. a reply over the server's max_payload: answer with the error, never crash the host
          log.error({ err, subject }, "cannot send the reply");
          try {
            m.respond(replyCodec.encode(makeReply({ error: busError(err) })).finish());
          } catch {
            /* the requester times out */
          }
        }
      })();
    }
  })();
  return sub;
}
