#!/usr/bin/env bash
# Builds the real GIE endpoint picker (EPP, Go) the benchmark runs beside Frontier's picker, from the Go module
# proxy only, into the same ignored cache as the control plane (never committed):
#   epp   sigs.k8s.io/gateway-api-inference-extension/cmd/epp at GIE_VERSION
#
# Usage: bash hack/build-epp.sh [BIN]   (BIN defaults to $FRONTIER_CACHE/bin, else ~/.cache/frontier/bin)
# Idempotent: skipped when BIN/epp exists and its stamp holds the pinned version. Build time is appended to
# BIN/BUILD_TIME.
#
# Why not `go install ...@v1.5.0`: the proxy answers 403 to the module's version *list*
# (`@v/list`, read for the deprecation check), so `go install MODULE/cmd/epp@VERSION` fails here. The exact
# version's zip is served, so the module is downloaded by version (`go mod download`) and built from its
# read-only folder in the module cache as the main module: its own go.mod and go.sum pin every dependency
# (what `go install` would have used too). GOWORK=off because the module ships a go.work naming a
# `conformance` module its zip does not contain; GOFLAGS=-modcacherw is not needed (the build writes nothing
# there).
set -euo pipefail

GIE_VERSION=v1.5.0
GIE_MODULE=sigs.k8s.io/gateway-api-inference-extension

bin=${1:-${FRONTIER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/frontier}/bin}
mkdir -p "$bin"
bin=$(cd "$bin" && pwd)
jobs=${GO_BUILD_JOBS:-2}
export GOFLAGS=${GOFLAGS:--buildvcs=false} GOWORK=off

log() { echo "==> epp: $*"; }

stamp="$GIE_MODULE@$GIE_VERSION"
if [[ -x "$bin/epp" && -f "$bin/.epp.stamp" && "$(cat "$bin/.epp.stamp")" == "$stamp" ]]; then
	log "GIE EPP $GIE_VERSION is current ($bin/epp)"
	exit 0
fi

log "building the GIE EPP $GIE_VERSION; cold: 15 min on 2 busy cores, downloads included; warm build cache: 16 s"
start=$(date +%s)
dir=$(go mod download -json "$GIE_MODULE@$GIE_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[[ -d "$dir" ]] || {
	echo "epp: go mod download $GIE_MODULE@$GIE_VERSION gave no module folder" >&2
	exit 1
}
(cd "$dir" && nice -n 10 go build -p "$jobs" -trimpath -ldflags "-s -w" -o "$bin/epp.tmp" ./cmd/epp)
mv "$bin/epp.tmp" "$bin/epp"
echo "$stamp" >"$bin/.epp.stamp"
end=$(date +%s)
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) epp-$GIE_VERSION $((end - start))s" >>"$bin/BUILD_TIME"
log "built $bin/epp in $((end - start))s"
