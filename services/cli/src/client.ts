/**
 * A promise / AsyncIterable client for the Vesper gateway. gRPC errors come back as
 * `ApiError`: a VesperError whose code is the gateway's `vesper-error-code` when the
 * gateway sent one, else derived from the gRPC status (and then `fromGateway` is
 * false: the call failed before or outside the gateway, e.g. it is not running).
 */
import { credentials, Metadata, status, type ChannelCredentials, type ServiceError } from "@grpc/grpc-js";
import { api, ErrorCode, isErrorCode, VesperError } from "@vesper/protocol";

/** Trailer that carries the Vesper error code (same key as the gateway's status.ts). */
export const VESPER_ERROR_CODE_KEY = "vesper-error-code";

export const DEFAULT_ADDR = "127.0.0.1:50051";

export class ApiError extends VesperError {
  override readonly name = "ApiError";
  constructor(
    code: ErrorCode,
    message: string,
    /** The gRPC status of the call. */
    readonly grpcCode: status,
    /** True when the gateway itself produced the error (it sent a Vesper code). */
    readonly fromGateway: boolean,
    options?: { cause?: unknown; details?: readonly string[] },
  ) {
    super(code, message, options);
  }
}

export interface ClientOptions {
  /** Default deadline of unary calls, ms (default 10 000). */
  timeoutMs?: number;
  /** Default: insecure. */
  credentials?: ChannelCredentials;
  /** Sent with every call (e.g. an auth token later). */
  metadata?: Metadata;
}

export interface CallOptions {
  /** Overrides the client's default deadline. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** A WatchEvents call. Breaking out of the iteration or aborting the signal cancels it. */
export interface EventStream extends AsyncIterable<api.WatchEventsResponse> {
  /** Resolves once the gateway has subscribed: events published from then on will arrive. */
  readonly ready: Promise<void>;
  cancel(): void;
}

const GRPC_TO_VESPER: Partial<Record<status, ErrorCode>> = {
  [status.UNAVAILABLE]: ErrorCode.Unavailable,
  [status.DEADLINE_EXCEEDED]: ErrorCode.Timeout,
  [status.UNAUTHENTICATED]: ErrorCode.Unauthenticated,
  [status.PERMISSION_DENIED]: ErrorCode.PermissionDenied,
  [status.INVALID_ARGUMENT]: ErrorCode.InvalidArgument,
  [status.RESOURCE_EXHAUSTED]: ErrorCode.TooLarge,
  [status.UNIMPLEMENTED]: ErrorCode.Unsupported,
};

/** Converts a grpc-js error into an ApiError (anything else is returned as a VesperError INTERNAL). */
export function toApiError(err: unknown): VesperError {
  if (err instanceof VesperError) return err;
  if (!isServiceError(err)) {
    return new VesperError(ErrorCode.Internal, err instanceof Error ? err.message : String(err), { cause: err });
  }
  const [first = "", ...details] = (err.details || err.message).split("\n");
  const sent = err.metadata?.get(VESPER_ERROR_CODE_KEY)[0];
  if (typeof sent === "string" && isErrorCode(sent)) {
    return new ApiError(sent, first, err.code, true, { cause: err, details });
  }
  return new ApiError(GRPC_TO_VESPER[err.code] ?? ErrorCode.Internal, first, err.code, false, { cause: err, details });
}

function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === "number";
}

export class VesperApiClient {
  readonly #client: api.VesperClient;
  readonly #timeoutMs: number;
  readonly #metadata: Metadata;

  constructor(
    readonly address: string,
    options: ClientOptions = {},
  ) {
    this.#client = new api.VesperClient(address, options.credentials ?? credentials.createInsecure());
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#metadata = options.metadata ?? new Metadata();
  }

  insmod(req: api.VirtInsmodRequest, o?: CallOptions): Promise<api.VirtInsmodResponse> {
    return this.#unary((r, m, opts, cb) => this.#client.virtInsmod(r, m, opts, cb), req, o);
  }

  rmmod(req: api.VirtRmmodRequest, o?: CallOptions): Promise<api.VirtRmmodResponse> {
    return this.#unary((r, m, opts, cb) => this.#client.virtRmmod(r, m, opts, cb), req, o);
  }

  /** Every guest (or one: req.guest); tracepoint lists only with req.withTracepoints. */
  async listGuests(o?: CallOptions, req: Partial<api.ListGuestsRequest> = {}): Promise<api.Guest[]> {
    const request: api.ListGuestsRequest = { guest: req.guest ?? "", withTracepoints: req.withTracepoints ?? false };
    const res = await this.#unary<api.ListGuestsRequest, api.ListGuestsResponse>((r, m, opts, cb) => this.#client.listGuests(r, m, opts, cb), request, o);
    return res.guests;
  }

  async listProbes(o?: CallOptions): Promise<api.ProbeInfo[]> {
    const res = await this.#unary<api.ListProbesRequest, api.ListProbesResponse>((r, m, opts, cb) => this.#client.listProbes(r, m, opts, cb), {}, o);
    return res.probes;
  }

  async listRules(o?: CallOptions): Promise<api.ListRulesResponse> {
    return this.#unary<api.ListRulesRequest, api.ListRulesResponse>((r, m, opts, cb) => this.#client.listRules(r, m, opts, cb), {}, o);
  }

  addRule(req: Partial<api.AddRuleRequest> & Pick<api.AddRuleRequest, "json">, o?: CallOptions): Promise<api.AddRuleResponse> {
    return this.#unary((r, m, opts, cb) => this.#client.addRule(r, m, opts, cb), api.AddRuleRequest.fromPartial(req), o);
  }

  removeRule(id: string, o?: CallOptions): Promise<api.RemoveRuleResponse> {
    return this.#unary<api.RemoveRuleRequest, api.RemoveRuleResponse>((r, m, opts, cb) => this.#client.removeRule(r, m, opts, cb), { id }, o);
  }

  watch(req: Partial<api.WatchEventsRequest>, o: { signal?: AbortSignal } = {}): EventStream {
    const call = this.#client.watchEvents(api.WatchEventsRequest.fromPartial(req), this.#metadata);
    let cancelled = false;
    const cancel = (): void => {
      cancelled = true;
      call.cancel();
    };
    const ready = new Promise<void>((resolve, reject) => {
      call.once("metadata", () => resolve());
      call.once("error", (err) => reject(toApiError(err)));
      call.once("end", () => resolve());
    });
    ready.catch(() => {}); // reported again by the iteration
    o.signal?.addEventListener("abort", cancel, { once: true });
    if (o.signal?.aborted) cancel();
    const signal = o.signal;
    return {
      ready,
      cancel,
      async *[Symbol.asyncIterator]() {
        try {
          for await (const m of call) yield m as api.WatchEventsResponse;
        } catch (err) {
          if (cancelled && isServiceError(err) && err.code === status.CANCELLED) return;
          throw toApiError(err);
        } finally {
          signal?.removeEventListener("abort", cancel);
          if (!cancelled) cancel();
        }
      },
    };
  }

  close(): void {
    this.#client.close();
  }

  #unary<Req, Res>(
    invoke: (
      req: Req,
      metadata: Metadata,
      options: { deadline: Date },
      cb: (err: ServiceError | null, res: Res) => void,
    ) => { cancel(): void },
    req: Req,
    o: CallOptions = {},
  ): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      if (o.signal?.aborted) return reject(o.signal.reason);
      const deadline = new Date(Date.now() + (o.timeoutMs ?? this.#timeoutMs));
      const onAbort = (): void => {
        c.cancel();
        reject(o.signal?.reason);
      };
      const c = invoke(req, this.#metadata, { deadline }, (err, res) => {
        o.signal?.removeEventListener("abort", onAbort);
        if (err) reject(toApiError(err));
        else resolve(res);
      });
      o.signal?.addEventListener("abort", onAbort, { once: true });
    });
  }
}
