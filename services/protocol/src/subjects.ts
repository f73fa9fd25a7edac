/**
 * Every NATS subject Vesper uses, in one place. Guest-facing subjects start with
 * vesper.ring.<guest>. so per-guest NATS permissions can be written as one pattern.
 */
export const subjects = {
  /** guest -> host control frames (Hello, IdleRequest, Result, ProbeStats). */
  ringUpCtl: (guest: string) => `vesper.ring.${guest}.up.ctl`,
  /** guest -> host probe data frames. */
  ringUpData: (guest: string) => `vesper.ring.${guest}.up.data`,
  /** host -> guest answers. */
  ringDown: (guest: string) => `vesper.ring.${guest}.down`,
  allRingUpCtl: "vesper.ring.*.up.ctl",
  allRingUpData: "vesper.ring.*.up.data",

  /** Decoded events and loss records (JetStream stream EVENTS_STREAM). */
  events: (guest: string, probe: string) => `vesper.events.${guest}.${probe}`,
  allEvents: "vesper.events.>",

  loaderInsmod: "vesper.svc.loader.insmod",
  loaderRmmod: "vesper.svc.loader.rmmod",
  loaderGuests: "vesper.svc.loader.guests",
  loaderProbes: "vesper.svc.loader.probes",
  listenerAttach: "vesper.svc.listener.attach",
  listenerDetach: "vesper.svc.listener.detach",
  /** Per-guest drop counters of the data path (bus.ListenerStatsRequest). */
  listenerStats: "vesper.svc.listener.stats",
  /** The rules service (services/failover): api.ListRulesRequest -> bus.RulesReply. */
  rulesList: "vesper.svc.rules.list",
  /** api.AddRuleRequest -> bus.AddRuleReply. */
  rulesAdd: "vesper.svc.rules.add",
  /** api.RemoveRuleRequest -> bus.RemoveRuleReply. */
  rulesRemove: "vesper.svc.rules.remove",

  /** Channel up/down notices from the QEMU bridge. */
  channel: (guest: string) => `vesper.channel.${guest}`,
  allChannels: "vesper.channel.*",
} as const;

export const EVENTS_STREAM = "VESPER_EVENTS";

/** The guest and probe tokens of a vesper.events.<guest>.<probe> subject (guest ids and probe names hold no dots). */
export function guestProbeOfEventsSubject(subject: string): [guest: string, probe: string] {
  const parts = subject.split(".");
  return [parts[2] ?? "", parts[3] ?? ""];
}

/** The guest token of a vesper.ring.<guest>.… subject, or undefined. */
export function guestOfRingSubject(subject: string): string | undefined {
  const parts = subject.split(".");
  return parts.length >= 4 && parts[0] === "vesper" && parts[1] === "ring" ? parts[2] : undefined;
}
