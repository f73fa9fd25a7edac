/**
 * Host-side decoding of raw ftrace data shipped by guests: event `format` files,
 * `events/header_page`, and ring-buffer pages from `per_cpu/cpuN/trace_pipe_raw`.
 * All inputs are untrusted; everything here throws only FrameError.
 */
export { parseEventFormat, type EventFormatDesc, type FieldFormat, type FieldKind } from "./format-parser.js";
export { parseHeaderPage, type HeaderPageLayout } from "./header-page.js";
export { cString, type FieldValue } from "./field-reader.js";
export { PageDecoder, type DecodedEvent, type DecodedPage, type PageDecoderOptions, type PageScan } from "./page-decoder.js";
export { decodeWaitStatus, addWaitStatusFields, WAIT_STATUS_FIELDS, type WaitStatus } from "./wait-status.js";
export * as ftraceLimits from "./limits.js";
