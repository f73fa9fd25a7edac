/** The page decoder of one load, from what the guest reported at load time. */
import { ErrorCode, ring, VesperError } from "@vesper/protocol";
import { PageDecoder, parseEventFormat, parseHeaderPage } from "./ftrace/index.js";

/** Builds a decoder from what a guest reported; throws VesperError(MALFORMED) on lies. */
export function buildDecoder(spec: ring.ProbeSpec, loaded: ring.LoadedProbe): PageDecoder {
  try {
    const formats = loaded.formats.map((f) => parseEventFormat(f.format, f.system));
    const header = parseHeaderPage(loaded.headerPage);
    const waitStatusFields = new Map<string, string>();
    for (const k of spec.kprobes) {
      if (k.waitStatusArg === "") continue;
      // The guest picks the kprobe group (its prefix may differ); match by event name.
      const f = loaded.formats.find((x) => x.name === k.name && x.system.endsWith(`_${spec.name}`));
      if (f !== undefined) waitStatusFields.set(`${f.system}/${f.name}`, k.waitStatusArg);
    }
    return new PageDecoder(formats, header, { waitStatusFields });
  } catch (err) {
    throw new VesperError(ErrorCode.Malformed, `the guest's event formats for ${spec.name} do not parse: ${(err as Error).message}`, {
      cause: err,
    });
  }
}
