/**
 * The JetStream stream that holds decoded events and loss records. The gateway and
 * the probe-listener both call `ensureEventsStream` at start, whichever runs first.
 */
import {
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
  type StreamConfig,
  type StreamInfo,
} from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import { EVENTS_STREAM, subjects, type Logger } from "@vesper/protocol";

/** What the stream is created with when it does not exist. An existing stream is left as it is. */
export const EVENTS_STREAM_CONFIG = {
  name: EVENTS_STREAM,
  subjects: [subjects.allEvents],
  storage: StorageType.File,
  retention: RetentionPolicy.Limits,
  discard: DiscardPolicy.Old,
  max_age: nanos(24 * 60 * 60 * 1000),
  max_bytes: 1024 * 1024 * 1024,
  duplicate_window: nanos(2 * 60 * 1000),
  num_replicas: 1,
} as const satisfies Partial<StreamConfig>;

/** Returns the events stream's info, creating the stream if it is missing. */
export async function ensureEventsStream(jsm: JetStreamManager, log?: Logger): Promise<StreamInfo> {
  try {
    const info = await jsm.streams.info(EVENTS_STREAM);
    if (!info.config.subjects?.includes(subjects.allEvents)) {
      log?.warn(
        { stream: EVENTS_STREAM, subjects: info.config.subjects },
        `stream ${EVENTS_STREAM} exists but does not capture ${subjects.allEvents}: events will not be stored`,
      );
    }
    return info;
  } catch (err) {
    if (!isStreamNotFound(err)) throw err;
  }
  try {
    const info = await jsm.streams.add({ ...EVENTS_STREAM_CONFIG, subjects: [...EVENTS_STREAM_CONFIG.subjects] });
    log?.info({ stream: EVENTS_STREAM, subjects: info.config.subjects }, "created the events stream");
    return info;
  } catch (err) {
    // Somebody else created it between our info and add.
    try {
      return await jsm.streams.info(EVENTS_STREAM);
    } catch {
      throw err;
    }
  }
}

export function isStreamNotFound(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound;
}
