export { QemuBridge, type QemuBridgeOptions } from "./bridge.js";
export { discoverChannels, type GuestChannel, LIBVIRT_CHANNEL_DIR } from "./guest-discovery.js";
export { QmpClient, flattenQmpData, type QmpEvent, type QmpClientHandlers } from "./qmp-client.js";
export { VmmWatcher, VMM_PROBE, qmpToEvent, discoverQmpSockets } from "./vmm-events.js";
