export * from "./bus-client.js";
export * from "./bus-responder.js";
export * from "./events-stream.js";
export * from "./nats-connect.js";
export * from "./probe-store.js";
export * from "./live-feed.js";
export * from "./keyed-serial.js";
