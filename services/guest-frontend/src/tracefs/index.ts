export { ProbeError, errnoOf } from "./errors.js";
export { Tracefs, type TracefsOptions, parseCpuList, pageSizeFromHeader } from "./tracefs.js";
export { ProbeEngine, parseCpuStats, type EngineLogger, type ReadersOptions } from "./engine.js";
export { DEFAULT_COALESCING } from "./coalescing.js";
export { readPageRuns, readPages, startUrgentReader, traceRawPath, urgentReadsInLoop, UrgentReader, type PageRead, type ReadMode, type ReadPagesOptions, type RunRead, type UrgentWait } from "./pages.js";
