/**
 * wait(2)-status decoding for events whose field holds one (do_exit's `code` argument):
 *   exit_code   = (status >> 8) & 0xff   (WEXITSTATUS)
 *   signal      = status & 0x7f          (WTERMSIG; 0 when the task exited normally)
 *   core_dumped = status & 0x80 ? 1 : 0  (WCOREDUMP)
 */
import type { FieldValue } from "./field-reader.js";

export interface WaitStatus {
  exit_code: bigint;
  signal: bigint;
  core_dumped: bigint;
}

export function decodeWaitStatus(status: bigint): WaitStatus {
  return {
    exit_code: (status >> 8n) & 0xffn,
    signal: status & 0x7fn,
    core_dumped: (status & 0x80n) !== 0n ? 1n : 0n,
  };
}

/** Names added next to the event's own fields; an existing field of the same name is never overwritten. */
export const WAIT_STATUS_FIELDS = ["exit_code", "signal", "core_dumped"] as const;

/**
 * Adds exit_code / signal / core_dumped to `fields` from `fields[source]`.
 * Returns false when the source is missing or not an integer (nothing is added then).
 */
export function addWaitStatusFields(fields: Record<string, FieldValue>, source: string): boolean {
  const v = fields[source];
  if (typeof v !== "bigint") return false;
  const w = decodeWaitStatus(v);
  if (fields.exit_code === undefined) fields.exit_code = w.exit_code;
  if (fields.signal === undefined) fields.signal = w.signal;
  if (fields.core_dumped === undefined) fields.core_dumped = w.core_dumped;
  return true;
}
