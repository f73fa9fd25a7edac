/**
 * The probe RPCs: each validates its request and forwards it to probe-loader over
 * the bus, with the call's deadline and cancellation carried through.
 */
import { call as busCall } from "@vesper/host-common";
import { api, bus, checkGuestId, checkProbeName, subjects } from "@vesper/protocol";
import { unary, type CallDeps } from "./unary-call.js";

type LoaderServer = Pick<api.VesperServer, "virtInsmod" | "virtRmmod" | "listGuests" | "listProbes">;

export function loaderCalls(deps: CallDeps): LoaderServer {
  const { nc } = deps;
  return {
    virtInsmod: unary(deps, "VirtInsmod", deps.loaderTimeoutMs, (req: api.VirtInsmodRequest, o) => {
      checkGuestId(req.guest);
      checkProbeName(req.probe);
      return busCall(nc, subjects.loaderInsmod, api.VirtInsmodRequest, bus.InsmodReply, req, o);
    }),
    virtRmmod: unary(deps, "VirtRmmod", deps.loaderTimeoutMs, (req: api.VirtRmmodRequest, o) => {
      checkGuestId(req.guest);
      checkProbeName(req.probe);
      return busCall(nc, subjects.loaderRmmod, api.VirtRmmodRequest, bus.RmmodReply, req, o);
    }),
    listGuests: unary(deps, "ListGuests", deps.listTimeoutMs, (req: api.ListGuestsRequest, o) =>
      busCall(nc, subjects.loaderGuests, api.ListGuestsRequest, bus.GuestsReply, req, o),
    ),
    listProbes: unary(deps, "ListProbes", deps.listTimeoutMs, (req: api.ListProbesRequest, o) =>
      busCall(nc, subjects.loaderProbes, api.ListProbesRequest, bus.ProbesReply, req, o),
    ),
  };
}
