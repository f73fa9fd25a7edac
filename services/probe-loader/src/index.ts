export { ProbeLoader, type ProbeLoaderOptions } from "./loader.js";
export { ProbeLibrary, parseProbeFile, type LibraryEntry } from "./probe-library.js";
export { builtinProbes } from "./builtin-probes.js";
