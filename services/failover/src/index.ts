export * from "./rules.js";
export * from "./actions.js";
export * from "./state-file.js";
export * from "./service.js";
