export * from "./rules.js";
export * from "./actions.js";
export * from "./state-file.js";
export * from "./service.js";
export * from "./rule-policy.js";
export * from "./rule-set.js";
export * from "./rule-store.js";
