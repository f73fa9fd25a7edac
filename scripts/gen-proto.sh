#!/usr/bin/env bash
# Generates TypeScript from proto/ with ts-proto into services/protocol/src/generated/.
# Generated code is not committed: the build always makes it from proto/, so the two cannot drift.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler (or run 'make deps')" >&2; exit 1; }
out=services/protocol/src/generated
rm -rf "$out" && mkdir -p "$out"
protoc \
  --plugin=protoc-gen-ts_proto=node_modules/.bin/protoc-gen-ts_proto \
  --ts_proto_out="$out" \
  --ts_proto_opt=outputServices=grpc-js,esModuleInterop=true,importSuffix=.js,forceLong=bigint,useOptionals=messages,oneof=unions-value,env=node,useExactTypes=false \
  -I proto \
  $(find proto -name '*.proto' | sort)
