export { startHost, type RunningHost } from "./host.js";
export { loadHostConfig, type HostConfig, SERVICES, type ServiceName } from "./config.js";
export {
  guestNatsUser,
  guestPermissions,
  HOST_NATS_USER,
  natsAuthConfig,
  natsUrlWithCredentials,
  newPassword,
  type NatsAuth,
  type NatsAuthOptions,
  type NatsUser,
} from "./nats-auth.js";
