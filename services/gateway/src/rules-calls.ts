/**
 * The watch-rule RPCs: each checks what it can cheaply and forwards the request to the rules
 * service (services/failover) over the bus, which parses rules with the same parser as the
 * rules file and keeps API rules in the KV bucket vesper_rules.
 */
import { call as busCall } from "@vesper/host-common";
import { api, bus, checkRuleId, ErrorCode, subjects, VesperError } from "@vesper/protocol";
import { unary, type CallDeps } from "./unary-call.js";

type RulesServer = Pick<api.VesperServer, "listRules" | "addRule" | "removeRule">;

export function rulesCalls(deps: CallDeps): RulesServer {
  const { nc } = deps;
  return {
    listRules: unary(deps, "ListRules", deps.rulesTimeoutMs, (req: api.ListRulesRequest, o) =>
      busCall(nc, subjects.rulesList, api.ListRulesRequest, bus.RulesReply, req, o),
    ),
    addRule: unary(deps, "AddRule", deps.rulesTimeoutMs, (req: api.AddRuleRequest, o) => {
      if (req.json.trim() === "") {
        throw new VesperError(ErrorCode.InvalidArgument, "AddRule needs the rule as JSON in `json` (one rule object, as in the rules file)");
      }
      return busCall(nc, subjects.rulesAdd, api.AddRuleRequest, bus.AddRuleReply, req, o);
    }),
    removeRule: unary(deps, "RemoveRule", deps.rulesTimeoutMs, (req: api.RemoveRuleRequest, o) => {
      checkRuleId(req.id);
      return busCall(nc, subjects.rulesRemove, api.RemoveRuleRequest, bus.RemoveRuleReply, req, o);
    }),
  };
}
