export { ProbeListener, pagesOf, type ProbeListenerOptions, type GuestCounters } from "./listener.js";
export { buildDecoder } from "./decoder-factory.js";
export { EventRecordReader, PAGES_HEADER, type RecordReaderStats } from "./record-reader.js";
export * from "./ftrace/index.js";
