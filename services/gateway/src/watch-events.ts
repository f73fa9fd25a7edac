/**
 * WatchEvents: an ordered JetStream consumer on the events stream, filtered by
 * subject (guest, probe) on the server and by event name here, written to the gRPC
 * stream with backpressure. At most `bufferMessages` events are pulled ahead of
 * what the client has taken: the consumer pulls its next batch only once the
 * previous one has been written, and a full gRPC send buffer stops the loop.
 *
 * The response headers are sent once the consumer exists, so a client that sees
 * them knows every event published from then on will reach it.
 *
 * With `live`, the records come from the probe-listener in this process (LiveFeed)
 * before they are stored, one bus round trip sooner, with stream seq 0.
 */
import { Metadata, type ServerWritableStream } from "@grpc/grpc-js";
import type { Consumer, ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg } from "@nats-io/jetstream";
import { ensureEventsStream, isStreamNotFound, type LiveFeed, type LiveRecord } from "@vesper/host-common";
import { EventRecordReader } from "@vesper/probe-listener";
import {
  api,
  checkGuestId,
  checkProbeName,
  ErrorCode,
  EVENTS_STREAM,
  VesperError,
  type Logger,
} from "@vesper/protocol";
import { callScope } from "./call-scope.js";
import type { AuthorizeFn } from "./options.js";
import { toGrpcError } from "./status.js";

export interface WatchDeps {
  js: JetStreamClient;
  jsm: JetStreamManager;
  log: Logger;
  bufferMessages: number;
  shutdown: AbortSignal;
  authorize: AuthorizeFn | undefined;
  /** The listener's live feed when it runs in this process (WatchEvents{live}). */
  live: LiveFeed | undefined;
  liveMaxQueued: number;
}

type WatchCall = ServerWritableStream<api.WatchEventsRequest, api.WatchEventsResponse>;

const EVENT_RE = /^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)?$/;

/** The JetStream filter subject for a request: vesper.events.<guest|*>.<probe|*>. */
export function eventsFilterSubject(req: Pick<api.WatchEventsRequest, "guest" | "probe">): string {
  return `vesper.events.${req.guest || "*"}.${req.probe || "*"}`;
}

/**
 * Whether an event named "system/event" passes the filter: the filter is empty,
 * equal to the name, or equal to its part after the slash.
 */
export function eventMatches(filter: string, name: string): boolean {
  if (filter === "" || filter === name) return true;
  if (filter.includes("/")) return false;
  const slash = name.indexOf("/");
  return slash >= 0 && name.slice(slash + 1) === filter;
}

function checkRequest(req: api.WatchEventsRequest): void {
  if (req.guest !== "") checkGuestId(req.guest);
  if (req.probe !== "") checkProbeName(req.probe);
  if (req.event !== "" && !EVENT_RE.test(req.event)) {
    throw new VesperError(
      ErrorCode.InvalidArgument,
      `invalid event filter ${JSON.stringify(req.event)}: use "system/event" or "event"`,
    );
  }
  if (req.live && req.fromStreamSeq > 0n) {
    throw new VesperError(ErrorCode.InvalidArgument, "a live watch starts now: it cannot replay from_stream_seq (watch without live to replay)");
  }
  if (req.fromStreamSeq > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VesperError(ErrorCode.InvalidArgument, `from_stream_seq ${req.fromStreamSeq} is out of range`);
  }
}

export function watchEventsHandler(deps: WatchDeps): (call: WatchCall) => void {
  return (call) => {
    void watchEvents(call, deps);
  };
}

async function watchEvents(call: WatchCall, deps: WatchDeps): Promise<void> {
  const req = call.request;
  const scope = callScope(call, deps.shutdown);
  const filter = eventsFilterSubject(req);
  const log = deps.log.child({ rpc: "WatchEvents", peer: call.getPeer(), filter, event: req.event || undefined, live: req.live || undefined });
  let sent = 0;
  let skipped = 0;
  try {
    await deps.authorize?.({ method: "WatchEvents", metadata: call.metadata, peer: call.getPeer() });
    checkRequest(req);
    const source = req.live ? openLive(deps, req) : await openStored(deps, filter, Number(req.fromStreamSeq), log);
    scope.signal.addEventListener("abort", source.close, { once: true });
    if (scope.signal.aborted) source.close();
    call.sendMetadata(new Metadata());
    log.debug({ from: req.fromStreamSeq }, "watching");

    // Bulk probes' stored pages are decoded here, for this watcher only.
    const reader = new EventRecordReader();
    for await (const m of source.records) {
      if (scope.signal.aborted) break;
      let records: api.WatchEventsResponse[];
      try {
        // One record, or the events of stored pages (bulk probes), which share its stream seq.
        records = reader.records(m.data, m.headers);
      } catch (err) {
        log.warn({ err, subject: m.subject, seq: seqOf(m) }, "skipping an undecodable message");
        skipped++;
        continue;
      }
      const streamSeq = BigInt(seqOf(m));
      for (const res of records) {
        if (res.kind === undefined) continue;
        if (res.kind.$case === "event" && !eventMatches(req.event, res.kind.value.event)) continue;
        res.streamSeq = streamSeq;
        sent++;
        if (!call.write(res)) await drained(call, scope.signal);
      }
      if (scope.signal.aborted) break;
    }
    scope.signal.removeEventListener("abort", source.close);
    if (!scope.signal.aborted) source.close();

    if (call.cancelled) {
      log.debug({ sent, skipped }, "cancelled by the client");
    } else if (scope.byShutdown()) {
      log.debug({ sent, skipped }, "ended by shutdown");
      call.emit("error", toGrpcError(scope.signal.reason));
    } else {
      // The consumer only ends on its own when the NATS connection closes.
      log.warn({ sent, skipped }, "event stream ended");
      call.emit(
        "error",
        toGrpcError(new VesperError(ErrorCode.Unavailable, "the gateway lost its NATS connection: retry the watch")),
      );
    }
  } catch (err) {
    if (call.cancelled) return;
    const g = toGrpcError(scope.byShutdown() ? scope.signal.reason : err);
    if (g.vesper.code === ErrorCode.Internal) log.error({ code: g.vesper.code, err: g.vesper }, "failed");
    else log.info({ code: g.vesper.code, reason: g.vesper.message, sent }, "failed");
    call.emit("error", g);
  } finally {
    scope.dispose();
  }
}

/** What a watch reads: stored records (with their stream seq) or live ones (seq 0). */
interface RecordSource {
  records: AsyncIterable<JsMsg | LiveRecord>;
  close: () => void;
}

function seqOf(m: JsMsg | LiveRecord): number {
  return "seq" in m ? m.seq : 0;
}

/** The live feed of the listener in this process: records before they are stored. */
function openLive(deps: WatchDeps, req: api.WatchEventsRequest): RecordSource {
  if (deps.live === undefined) {
    throw new VesperError(
      ErrorCode.Unsupported,
      "live watches need the probe-listener in the gateway's process (vesper-host runs both unless --services splits them): watch without live",
    );
  }
  const ac = new AbortController();
  const records = deps.live.watch({ guest: req.guest, probe: req.probe }, { maxQueued: deps.liveMaxQueued, signal: ac.signal });
  return { records, close: () => ac.abort() };
}

/** An ordered consumer on the events stream. */
async function openStored(deps: WatchDeps, filter: string, fromSeq: number, log: Logger): Promise<RecordSource> {
  const { consumer, messages } = await openConsumer(deps, filter, fromSeq, log);
  return {
    records: messages,
    close: () => {
      void messages
        .close()
        .catch(() => {})
        .then(() => consumer.delete())
        .catch(() => {}); // ephemeral anyway: the server drops it after 5 min idle
    },
  };
}

async function openConsumer(
  deps: WatchDeps,
  filter: string,
  fromSeq: number,
  log: Logger,
): Promise<{ consumer: Consumer; messages: ConsumerMessages }> {
  for (let attempt = 0; ; attempt++) {
    try {
      // "New only" is a start sequence one past the current end, not DeliverPolicy.New:
      // the ordered consumer restarts from its cursor after a reset, and with
      // DeliverPolicy.New that cursor would be 0 (the whole stream) until the first event.
      const start = fromSeq > 0 ? fromSeq : (await deps.jsm.streams.info(EVENTS_STREAM)).state.last_seq + 1;
      const consumer = await deps.js.consumers.get(EVENTS_STREAM, { filter_subjects: filter, opt_start_seq: start });
      return { consumer, messages: await consumer.consume({ max_messages: deps.bufferMessages }) };
    } catch (err) {
      if (attempt === 0 && isStreamNotFound(err)) {
        await ensureEventsStream(deps.jsm, log);
        continue;
      }
      throw new VesperError(ErrorCode.Unavailable, `cannot read the events stream ${EVENTS_STREAM}: ${errorMessage(err)}`, {
        cause: err,
      });
    }
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Resolves on "drain", or at once when the call is aborted or closed. */
function drained(call: WatchCall, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      call.removeListener("drain", done);
      call.removeListener("close", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    call.once("drain", done);
    call.once("close", done);
    signal.addEventListener("abort", done, { once: true });
  });
}
