/**
 * ProbeError: a VesperError that also carries the ring's ResultCode and the lines
 * the kernel wrote to tracefs error_log, so a refusal reaches the operator verbatim.
 */
import { ErrorCode, ring, VesperError } from "@vesper/protocol";

const R = ring.ResultCode;

function errorCodeOf(code: ring.ResultCode): ErrorCode {
  switch (code) {
    case R.RESULT_CODE_INVALID_SPEC:
      return ErrorCode.InvalidSpec;
    case R.RESULT_CODE_ALREADY_LOADED:
      return ErrorCode.ProbeAlreadyLoaded;
    case R.RESULT_CODE_NOT_LOADED:
      return ErrorCode.ProbeNotLoaded;
    case R.RESULT_CODE_KERNEL_REFUSED:
      return ErrorCode.KernelRefused;
    case R.RESULT_CODE_UNSUPPORTED:
      return ErrorCode.Unsupported;
    default:
      return ErrorCode.Internal;
  }
}

export class ProbeError extends VesperError {
  override readonly name = "ProbeError";
  /** tracefs error_log lines (and similar kernel diagnostics) that explain the failure. */
  readonly kernelLog: readonly string[];
  constructor(
    readonly resultCode: ring.ResultCode,
    message: string,
    options?: { cause?: unknown; kernelLog?: readonly string[]; errno?: string },
  ) {
    const kernelLog = options?.kernelLog ?? [];
    super(errorCodeOf(resultCode), message, { cause: options?.cause, details: kernelLog });
    this.kernelLog = kernelLog;
    this.errno = options?.errno;
  }
  /** The errno code (EINVAL, ENOENT...) of the tracefs write that failed, if any. */
  readonly errno: string | undefined;
}

/** The errno code of a Node fs error, or undefined. */
export function errnoOf(err: unknown): string | undefined {
  if (typeof err === "object" && err !== null && "code" in err && typeof (err as { code: unknown }).code === "string") {
    return (err as { code: string }).code;
  }
  return undefined;
}

export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
