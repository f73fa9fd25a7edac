export { ProbeListener, buildDecoder, type ProbeListenerOptions, type GuestCounters } from "./listener.js";
export * from "./ftrace/index.js";
