/**
 * Parser for tracefs `events/header_page`, which describes the ring-buffer page header:
 *
 *   	field: u64 timestamp;	offset:0;	size:8;	signed:0;
 *   	field: local_t commit;	offset:8;	size:8;	signed:1;
 *   	field: int overwrite;	offset:8;	size:1;	signed:1;
 *   	field: char data;	offset:16;	size:4080;	signed:0;
 *
 * `commit` is a local_t (a long): 8 bytes on 64-bit guests, 4 on 32-bit ones. Its size is
 * also the size of the "missed events" count stored after the data (an unsigned long).
 */
import { ErrorCode, FrameError } from "@vesper/protocol";
import { parseFieldLine } from "./format-parser.js";
import { MAX_HEADER_PAGE_TEXT_BYTES, MAX_LINE_CHARS, MAX_OFFSET } from "./limits.js";

export interface HeaderPageLayout {
  timestampOffset: number;
  commitOffset: number;
  /** 4 or 8. */
  commitSize: number;
  dataOffset: number;
  /** Data bytes per page as the guest reports it; the decoder trusts the page length instead. */
  dataSize: number;
}

const malformed = (what: string): FrameError => new FrameError(ErrorCode.Malformed, `header_page: ${what}`);

export function parseHeaderPage(text: string): HeaderPageLayout {
  if (typeof text !== "string") throw malformed("text is not a string");
  if (text.length > MAX_HEADER_PAGE_TEXT_BYTES) {
    throw new FrameError(ErrorCode.TooLarge, `header_page: ${text.length} chars exceeds ${MAX_HEADER_PAGE_TEXT_BYTES}`);
  }
  let ts: { offset: number; size: number } | undefined;
  let commit: { offset: number; size: number } | undefined;
  let data: { offset: number; size: number } | undefined;
  let lines = 0;
  for (const raw of text.split("\n")) {
    if (++lines > 256) throw malformed("too many lines");
    if (raw.length > MAX_LINE_CHARS) throw malformed("line too long");
    const line = raw.trim();
    if (!line.startsWith("field:")) continue;
    const f = parseFieldLine(line);
    const slot = { offset: f.offset, size: f.size };
    if (f.name === "timestamp") {
      if (ts) throw malformed("duplicate timestamp");
      ts = slot;
    } else if (f.name === "commit") {
      if (commit) throw malformed("duplicate commit");
      commit = slot;
    } else if (f.name === "data") {
      if (data) throw malformed("duplicate data");
      data = slot;
    }
  }
  if (!ts) throw malformed("no timestamp field");
  if (!commit) throw malformed("no commit field");
  if (!data) throw malformed("no data field");
  if (ts.size !== 8) throw malformed(`timestamp size ${ts.size}, expected 8`);
  if (commit.size !== 4 && commit.size !== 8) throw malformed(`commit size ${commit.size}, expected 4 or 8`);
  if (ts.offset + 8 > data.offset) throw malformed("timestamp overlaps data");
  if (commit.offset + commit.size > data.offset) throw malformed("commit overlaps data");
  if (data.size === 0 || data.offset + data.size > MAX_OFFSET) throw malformed(`bad data size ${data.size}`);
  return {
    timestampOffset: ts.offset,
    commitOffset: commit.offset,
    commitSize: commit.size,
    dataOffset: data.offset,
    dataSize: data.size,
  };
}
