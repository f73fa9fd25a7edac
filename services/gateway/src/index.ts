export { startGateway, type Gateway } from "./server.js";
export { DEFAULT_LISTEN, type AuthorizeFn, type CallContext, type GatewayOptions } from "./options.js";
export { grpcStatusOf, toGrpcError, VESPER_ERROR_CODE_KEY, type GrpcError } from "./status.js";
export { eventMatches, eventsFilterSubject } from "./watch-events.js";
export {
  bearerToken,
  isLoopbackListen,
  loadTokensFile,
  parseTokens,
  RPC_METHODS,
  tokenAuthorizer,
  type RpcMethod,
  type TokenClient,
} from "./tokens.js";
