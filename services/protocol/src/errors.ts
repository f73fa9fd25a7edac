/**
 * Typed errors shared by every Vesper service. Each carries a stable `code` that
 * crosses process boundaries (bus replies, gRPC status details, CLI exit messages).
 */
export const ErrorCode = {
  UnknownGuest: "UNKNOWN_GUEST",
  GuestOffline: "GUEST_OFFLINE",
  UnknownProbe: "UNKNOWN_PROBE",
  ProbeAlreadyLoaded: "PROBE_ALREADY_LOADED",
  ProbeNotLoaded: "PROBE_NOT_LOADED",
  UnknownRule: "UNKNOWN_RULE",
  RuleAlreadyExists: "RULE_ALREADY_EXISTS",
  /** The rule comes from the rules file: only editing the file changes it. */
  RuleInFile: "RULE_IN_FILE",
  /** The rule needs what this host does not allow rules added through the API (e.g. exec actions). */
  RuleNotAllowed: "RULE_NOT_ALLOWED",
  InvalidSpec: "INVALID_SPEC",
  InvalidArgument: "INVALID_ARGUMENT",
  KernelRefused: "KERNEL_REFUSED",
  Unsupported: "UNSUPPORTED",
  Timeout: "TIMEOUT",
  Unavailable: "UNAVAILABLE",
  Unauthenticated: "UNAUTHENTICATED",
  PermissionDenied: "PERMISSION_DENIED",
  Malformed: "MALFORMED",
  TooLarge: "TOO_LARGE",
  Internal: "INTERNAL",
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

const known = new Set<string>(Object.values(ErrorCode));
export function isErrorCode(s: string): s is ErrorCode {
  return known.has(s);
}

export class VesperError extends Error {
  override readonly name: string = "VesperError";
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown; details?: readonly string[] },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.details = options?.details ?? [];
  }
  /** Extra lines that explain the error (e.g. the guest kernel's tracefs error_log). */
  readonly details: readonly string[];
}

export function isVesperError(err: unknown, code?: ErrorCode): err is VesperError {
  return err instanceof VesperError && (code === undefined || err.code === code);
}

/** Errors in the byte stream or message layer of the ring; never fatal to the process. */
export class FrameError extends VesperError {
  override readonly name = "FrameError";
}

/** Turns anything thrown into a VesperError without losing the original. */
export function toVesperError(err: unknown): VesperError {
  if (err instanceof VesperError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new VesperError(ErrorCode.Internal, message, { cause: err });
}
