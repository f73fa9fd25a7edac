/** The guest frontend as a library: what main.ts runs, for tests and benchmarks that run several. */
export { loadFrontendConfig, FRONTEND_USAGE, type FrontendConfig } from "./config.js";
export { startFrontend, type RunningFrontend } from "./run-frontend.js";
