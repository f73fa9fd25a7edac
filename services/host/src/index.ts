export { startHost, type RunningHost } from "./host.js";
export { loadHostConfig, type HostConfig, SERVICES, type ServiceName } from "./config.js";
