/**
 * The one place that turns Vesper errors into gRPC statuses. The Vesper code travels
 * in the `vesper-error-code` trailer so clients can tell UNKNOWN_GUEST from
 * UNKNOWN_PROBE; detail lines follow the message after newlines.
 */
import { Metadata, status, type StatusObject } from "@grpc/grpc-js";
import { ErrorCode, toVesperError, type VesperError } from "@vesper/protocol";

export const VESPER_ERROR_CODE_KEY = "vesper-error-code";

const GRPC_STATUS_OF: Readonly<Record<ErrorCode, status>> = {
  [ErrorCode.UnknownGuest]: status.NOT_FOUND,
  [ErrorCode.UnknownProbe]: status.NOT_FOUND,
  [ErrorCode.ProbeNotLoaded]: status.NOT_FOUND,
  [ErrorCode.ProbeAlreadyLoaded]: status.ALREADY_EXISTS,
  [ErrorCode.UnknownRule]: status.NOT_FOUND,
  [ErrorCode.RuleAlreadyExists]: status.ALREADY_EXISTS,
  [ErrorCode.RuleInFile]: status.FAILED_PRECONDITION,
  [ErrorCode.RuleNotAllowed]: status.FAILED_PRECONDITION,
  [ErrorCode.GuestOffline]: status.UNAVAILABLE,
  [ErrorCode.Unavailable]: status.UNAVAILABLE,
  [ErrorCode.InvalidSpec]: status.INVALID_ARGUMENT,
  [ErrorCode.InvalidArgument]: status.INVALID_ARGUMENT,
  [ErrorCode.KernelRefused]: status.FAILED_PRECONDITION,
  [ErrorCode.Unsupported]: status.FAILED_PRECONDITION,
  [ErrorCode.Timeout]: status.DEADLINE_EXCEEDED,
  [ErrorCode.Unauthenticated]: status.UNAUTHENTICATED,
  [ErrorCode.PermissionDenied]: status.PERMISSION_DENIED,
  [ErrorCode.TooLarge]: status.RESOURCE_EXHAUSTED,
  [ErrorCode.Malformed]: status.INTERNAL,
  [ErrorCode.Internal]: status.INTERNAL,
};

export function grpcStatusOf(code: ErrorCode): status {
  return GRPC_STATUS_OF[code];
}

/** A status object for `callback(err)` or `call.emit("error", err)`. */
export type GrpcError = Pick<StatusObject, "code" | "details" | "metadata">;

export function toGrpcError(err: unknown): GrpcError & { vesper: VesperError } {
  const e = toVesperError(err);
  const metadata = new Metadata();
  metadata.set(VESPER_ERROR_CODE_KEY, e.code);
  return {
    code: grpcStatusOf(e.code),
    details: [e.message, ...e.details].join("\n"),
    metadata,
    vesper: e,
  };
}
