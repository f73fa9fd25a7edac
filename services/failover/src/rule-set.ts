/**
 * The rules in effect: those of the rules file merged with those added through the API (the KV
 * store). A file rule wins over an API rule with the same id; an API rule that does not parse or
 * that the host's policy refuses is kept (ListRules shows why) but not in effect. Changes carry
 * the store's revision, so a late or replayed change never undoes a newer one.
 */
import { checkApiRule, type ApiRulePolicy } from "./rule-policy.js";
import type { StoredRule } from "./rule-store.js";
import { parseRuleText, type Rule } from "./rules.js";

export interface ApiRuleEntry {
  id: string;
  json: string;
  revision: number;
  /** Parsed rule, when it parses. */
  rule: Rule | undefined;
  /** Why the rule is not in effect, or "". */
  inactiveReason: string;
}

export class RuleSet {
  private file = new Map<string, Rule>();
  private readonly api = new Map<string, ApiRuleEntry>();
  /** Highest store revision seen per id, deletions included. */
  private readonly revisions = new Map<string, number>();
  private inEffect: readonly Rule[] = [];

  constructor(private readonly policy: ApiRulePolicy) {}

  /** The rules that act on events: the file's, then the API's, each in id order. */
  get effective(): readonly Rule[] {
    return this.inEffect;
  }

  get fileRules(): readonly Rule[] {
    return [...this.file.values()];
  }

  get apiEntries(): readonly ApiRuleEntry[] {
    return [...this.api.values()].map((e) => ({ ...e, inactiveReason: this.inactiveReason(e) }));
  }

  fileRule(id: string): Rule | undefined {
    return this.file.get(id);
  }

  apiEntry(id: string): ApiRuleEntry | undefined {
    const e = this.api.get(id);
    return e === undefined ? undefined : { ...e, inactiveReason: this.inactiveReason(e) };
  }

  setFileRules(rules: readonly Rule[]): void {
    this.file = new Map(rules.map((r) => [r.id, r]));
    this.recompute();
  }

  /** Applies a change from the store; false when it changed nothing (old revision, or already applied). */
  apply(s: StoredRule): boolean {
    if (s.revision <= (this.revisions.get(s.id) ?? 0)) return false;
    this.revisions.set(s.id, s.revision);
    if (s.deleted) {
      const had = this.api.delete(s.id);
      this.recompute();
      return had;
    }
    const prev = this.api.get(s.id);
    if (prev?.json === s.json) {
      prev.revision = s.revision;
      return false;
    }
    let rule: Rule | undefined;
    let reason = "";
    try {
      rule = parseRuleText(s.json, "rule");
      if (rule.id !== s.id) throw new Error(`it is stored as ${s.id} but its service and guest make it ${rule.id}`);
      checkApiRule(rule, this.policy);
    } catch (err) {
      reason = `not a usable rule: ${(err as Error).message}`;
      if (rule?.id !== s.id) rule = undefined;
    }
    this.api.set(s.id, { id: s.id, json: s.json, revision: s.revision, rule, inactiveReason: reason });
    this.recompute();
    return true;
  }

  /**
   * Forgets an API rule this service just deleted from the store (the store's own deletion
   * arrives later through the watch, with a higher revision, and changes nothing then).
   */
  forget(id: string): boolean {
    const had = this.api.delete(id);
    if (had) this.recompute();
    return had;
  }

  private inactiveReason(e: ApiRuleEntry): string {
    if (e.inactiveReason !== "") return e.inactiveReason;
    if (this.file.has(e.id)) return "the rules file has a rule with the same id, which is the one in effect: remove this one";
    return "";
  }

  private recompute(): void {
    const byId = (a: Rule, b: Rule): number => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
    const api = [...this.api.values()]
      .filter((e) => e.rule !== undefined && this.inactiveReason(e) === "")
      .map((e) => e.rule!);
    this.inEffect = [...[...this.file.values()].sort(byId), ...api.sort(byId)];
  }
}
