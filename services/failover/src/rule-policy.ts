/**
 * What rules added through the API may do. A rule's actions run as vesper-host's user (root on a
 * cluster node), so a rule that runs a command is as powerful as a shell: rules from the API may
 * not run commands of their own unless the host allows it (vesper-host --rules-allow-exec).
 * Webhooks and the plain pacemaker action (crm_resource --fail ...) are always allowed.
 */
import { ErrorCode, VesperError } from "@vesper/protocol";
import type { Rule } from "./rules.js";

export interface ApiRulePolicy {
  /** Let API rules run commands: exec actions, pacemaker actions with their own prefix/crm_resource. */
  allowExec: boolean;
}

/** The commands a rule's actions would run besides the plain crm_resource: "actions[i] (kind) runs argv0". */
export function commandsOf(rule: Rule): string[] {
  const out: string[] = [];
  rule.actions.forEach((a, i) => {
    if (a.kind === "exec") out.push(`actions[${i}] (exec) runs ${a.argv[0]}`);
    else if (a.kind === "pacemaker" && (a.prefix.length > 0 || a.crmResource !== "crm_resource")) {
      out.push(`actions[${i}] (pacemaker) runs ${a.prefix[0] ?? a.crmResource}`);
    }
  });
  return out;
}

/** Throws RULE_NOT_ALLOWED when `rule` needs what the policy refuses to API rules. */
export function checkApiRule(rule: Rule, policy: ApiRulePolicy): void {
  if (policy.allowExec) return;
  const cmds = commandsOf(rule);
  if (cmds.length === 0) return;
  throw new VesperError(
    ErrorCode.RuleNotAllowed,
    `rule ${rule.id}: ${cmds.join(", ")}, and rules added through the API may not run commands on this host: ` +
      "put the rule in the rules file (--rules), use a webhook action, or start vesper-host with --rules-allow-exec " +
      "(then whoever may call AddRule can run commands as vesper-host's user)",
  );
}
