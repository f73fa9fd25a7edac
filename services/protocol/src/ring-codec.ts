/**
 * Decoding ring messages defensively: anything a guest sends may be garbage, so
 * every failure becomes a FrameError with a code, never an exception of another kind.
 */
import { ErrorCode, FrameError } from "./errors.js";
import { GuestMessage, HostMessage, ProtocolVersion } from "./generated/vesper/ring/v1/ring.js";

export const PROTOCOL_VERSION = ProtocolVersion.PROTOCOL_VERSION_1;

function decodeWith<T>(what: string, decode: (b: Uint8Array) => T, bytes: Uint8Array): T {
  try {
    return decode(bytes);
  } catch (err) {
    throw new FrameError(ErrorCode.Malformed, `malformed ${what}: ${(err as Error).message}`, { cause: err });
  }
}

export function decodeGuestMessage(bytes: Uint8Array): GuestMessage {
  const msg = decodeWith("guest message", (b) => GuestMessage.decode(b), bytes);
  if (msg.version !== PROTOCOL_VERSION) {
    throw new FrameError(
      ErrorCode.Malformed,
      `protocol version ${msg.version} not supported (host speaks ${PROTOCOL_VERSION})`,
    );
  }
  if (msg.body === undefined) throw new FrameError(ErrorCode.Malformed, "guest message has no body");
  return msg;
}

export function decodeHostMessage(bytes: Uint8Array): HostMessage {
  const msg = decodeWith("host message", (b) => HostMessage.decode(b), bytes);
  if (msg.version !== PROTOCOL_VERSION) {
    throw new FrameError(
      ErrorCode.Malformed,
      `protocol version ${msg.version} not supported (guest speaks ${PROTOCOL_VERSION})`,
    );
  }
  return msg;
}

export function encodeGuestMessage(msg: GuestMessage): Uint8Array {
  return GuestMessage.encode(msg).finish();
}

export function encodeHostMessage(msg: HostMessage): Uint8Array {
  return HostMessage.encode(msg).finish();
}
