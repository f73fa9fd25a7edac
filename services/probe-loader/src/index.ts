export { ProbeLoader, AGENT_PROBE, type ProbeLoaderOptions } from "./loader.js";
export { ProbeLibrary, parseProbeFile, missingRequirements, type LibraryEntry } from "./probe-library.js";
export { builtinProbes, builtinProbeDocs, hostEventDocs, type BuiltinProbe } from "./builtin-probes.js";
export { AgentWatch, type AgentLost, type AgentBack } from "./agent-watch.js";
