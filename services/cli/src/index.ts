export { main, parseDuration, parseOptions, type CliIo, type OutputStream } from "./main.js";
export {
  ApiError,
  DEFAULT_ADDR,
  toApiError,
  VesperApiClient,
  VESPER_ERROR_CODE_KEY,
  type CallOptions,
  type ClientOptions,
  type EventStream,
} from "./client.js";
export * from "./format.js";
