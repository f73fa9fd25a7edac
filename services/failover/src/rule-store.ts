/**
 * Watch rules added through the API, kept in a JetStream KV bucket so that they outlive the rules
 * service and vesper-host. Key: <guest>.<service> (KV keys cannot hold the "@" of a rule id);
 * value: the rule's JSON text, so `nats kv get vesper_rules web1.web` shows it as written.
 * The revision of an entry is its stream sequence: later changes have higher ones.
 */
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";
import { Kvm, type KV, type KvEntry } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { checkRuleId, ErrorCode, ruleId, VesperError } from "@vesper/protocol";

export const RULES_BUCKET = "vesper_rules";

/** One stored rule, or the deletion of one. */
export interface StoredRule {
  id: string;
  /** The rule's JSON text ("" for a deletion). */
  json: string;
  revision: number;
  deleted: boolean;
}

/** A live view of the bucket: every current entry first, then each change. */
export interface RuleWatch {
  readonly entries: AsyncIterable<StoredRule>;
  stop(): void;
}

export function ruleKey(id: string): string {
  const { service, guest } = checkRuleId(id);
  return `${guest}.${service}`;
}

/** The rule id of a key, or undefined for a key that is not <guest>.<service>. */
export function ruleIdOfKey(key: string): string | undefined {
  const parts = key.split(".");
  if (parts.length !== 2) return undefined;
  const id = ruleId(parts[1]!, parts[0]!);
  try {
    checkRuleId(id);
    return id;
  } catch {
    return undefined;
  }
}

function storedOf(e: KvEntry): StoredRule | undefined {
  const id = ruleIdOfKey(e.key);
  if (id === undefined) return undefined;
  const deleted = e.operation !== "PUT";
  return { id, json: deleted ? "" : e.string(), revision: e.revision, deleted };
}

export class RuleStore {
  private constructor(private readonly kv: KV) {}

  static async open(nc: NatsConnection): Promise<RuleStore> {
    return new RuleStore(await new Kvm(nc).create(RULES_BUCKET, { history: 1 }));
  }

  /** Every stored rule. */
  async list(): Promise<StoredRule[]> {
    const out: StoredRule[] = [];
    for await (const k of await this.kv.keys()) {
      const e = await this.kv.get(k);
      const s = e === null ? undefined : storedOf(e);
      if (s !== undefined && !s.deleted) out.push(s);
    }
    return out;
  }

  async get(id: string): Promise<StoredRule | undefined> {
    const e = await this.kv.get(ruleKey(id));
    const s = e === null ? undefined : storedOf(e);
    return s?.deleted === false ? s : undefined;
  }

  /** Stores a new rule; RULE_ALREADY_EXISTS when one with this id is there (atomic on the server). */
  async create(id: string, json: string): Promise<number> {
    try {
      return await this.kv.create(ruleKey(id), json);
    } catch (err) {
      if (
        err instanceof JetStreamApiError &&
        (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
      ) {
        throw new VesperError(ErrorCode.RuleAlreadyExists, `rule ${id} already exists: set replace to overwrite it`, { cause: err });
      }
      throw err;
    }
  }

  /** Stores a rule, overwriting any with the same id. */
  async put(id: string, json: string): Promise<number> {
    return this.kv.put(ruleKey(id), json);
  }

  async delete(id: string): Promise<void> {
    await this.kv.delete(ruleKey(id));
  }

  async watch(): Promise<RuleWatch> {
    const it = await this.kv.watch();
    return {
      entries: (async function* () {
        for await (const e of it) {
          const s = storedOf(e);
          if (s !== undefined) yield s;
        }
      })(),
      stop: () => it.stop(),
    };
  }
}
