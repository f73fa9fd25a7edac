/**
 * The input of `vesper rules add FILE|-`: one rule object, or a rules document ({"rules": [...]}
 * or a bare list, as in a rules file), split into rule objects the gateway takes one at a time.
 * The gateway's rules service parses each rule: the CLI only needs JSON here.
 */
import { readFile } from "node:fs/promises";

/** Bad input the user must fix (exit 1): unreadable file, not JSON, no rules. */
export class InputError extends Error {
  override readonly name = "InputError";
}

export type TextSource = AsyncIterable<string | Uint8Array> | Iterable<string | Uint8Array>;

/** How a rule input is named in messages. */
export function inputName(file: string): string {
  return file === "-" ? "standard input" : file;
}

export async function readRuleInput(file: string, stdin: TextSource): Promise<string> {
  if (file !== "-") {
    try {
      return await readFile(file, "utf8");
    } catch (err) {
      throw new InputError(`cannot read ${file}: ${(err as Error).message}; give a JSON file with one rule or {"rules": [...]}, or - for standard input`);
    }
  }
  let text = "";
  const dec = new TextDecoder();
  for await (const chunk of stdin) text += typeof chunk === "string" ? chunk : dec.decode(chunk, { stream: true });
  return text + dec.decode();
}

export interface RuleItem {
  /** The rule object as JSON text, for AddRule. */
  json: string;
  /** "<service>@<guest>" when the object says so (for messages; the service decides). */
  id: string | undefined;
  /** Where it is in the input: "rules.json" or "rules.json rules[1]". */
  where: string;
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export function ruleItems(text: string, file: string): RuleItem[] {
  const name = inputName(file);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new InputError(`${name} is not valid JSON: ${(err as Error).message}`);
  }
  if (!isObj(doc) && !Array.isArray(doc)) throw new InputError(`${name}: expected one rule object, or {"rules": [ ... ]}`);
  // undefined: the document is one rule
  const list = Array.isArray(doc) ? doc : Array.isArray(doc.rules) ? doc.rules : undefined;
  if (list?.length === 0) throw new InputError(`${name} has no rules: give one rule object, or {"rules": [ ... ]} with at least one`);
  const items: unknown[] = list ?? [doc];
  return items.map((r, i) => ({
    json: JSON.stringify(r),
    id: isObj(r) && typeof r.service === "string" && typeof r.guest === "string" ? `${r.service}@${r.guest}` : undefined,
    where: list === undefined ? name : `${name} rules[${i}]`,
  }));
}
