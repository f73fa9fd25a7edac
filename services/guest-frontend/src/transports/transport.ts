/**
 * The guest side of the Communication layer. The ring client only ever sees this
 * interface; which channel carries the frames (virtio-serial, NATS) is decided in
 * one place (open-transport.ts).
 */
import type { FrameKind } from "@vesper/protocol";

export interface GuestTransport {
  readonly name: "virtio-serial" | "nats";
  /**
   * Sends one message. Resolves when the channel has taken it; a slow channel is
   * felt here as backpressure (the caller stops reading the kernel ring, so the
   * kernel keeps the events or counts what it overwrites).
   */
  send(kind: FrameKind, payload: Uint8Array): Promise<void>;
  /**
   * Optional, byte-stream transports: sends one frame given as parts whose
   * concatenation is the frame, its 8-byte header first (written by the caller): the
   * page bytes go out as they are, with no copy.
   */
  sendParts?(kind: FrameKind, parts: readonly Buffer[]): Promise<void>;
  /**
   * Optional: sends a data message now, on this thread, if the transport can without
   * waiting (true), or does nothing (false: use send/sendParts). The urgent path: no
   * promise between a probe hit and the channel. Byte-stream transports get a frame
   * (header first in parts[0]), message transports the bare message.
   */
  trySendNow?(kind: FrameKind, parts: readonly Buffer[]): boolean;
  /** Whether trySendNow wants a framed message. */
  readonly framed?: boolean;
  /** Host messages, one payload each, until close(). */
  incoming(): AsyncIterable<Uint8Array>;
  close(): Promise<void>;
}
