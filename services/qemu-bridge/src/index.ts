export { QemuBridge, type QemuBridgeOptions } from "./bridge.js";
export { discoverChannels, type GuestChannel, LIBVIRT_CHANNEL_DIR } from "./guest-discovery.js";
