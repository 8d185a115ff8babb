#!/usr/bin/env bash
# Builds the local Kubernetes control plane used by the cluster tests, from the Go module proxy only:
#   kubecp  one multi-call binary: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
#           (hack/kubecp)
#   kwok    fake kubelets (nodes and pods become Ready without containers)
#   helm    v4, for the chart tests
# and copies the assets they need out of the Go module cache (never committed):
#   <cache>/kwok/stages.yaml     KWOK's default node and pod stages, concatenated
#   <cache>/gie/*.yaml           the GIE CRDs (InferencePool v1, ...) at the pinned GIE version
#   <cache>/gateway-api/*.yaml   the Gateway API CRDs (standard channel), for the examples' Gateways
#
# Usage: bash hack/build.sh [BIN]   (BIN defaults to $FRONTIER_CACHE/bin, else ~/.cache/frontier/bin; assets go to BIN's parent folder)
# Idempotent: each part is stamped with its pinned version (and, for kubecp, a hash of hack/kubecp), and skipped
# when the stamp matches. Build times are appended to BIN/BUILD_TIME.
set -euo pipefail

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.8 # the etcd server version k8s.io/kubernetes v1.36.3 itself requires
KWOK_VERSION=v0.8.0
HELM_VERSION=v4.3.1
GIE_VERSION=v1.5.0
GATEWAY_API_VERSION=v1.4.0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${1:-${FRONTIER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/frontier}/bin}
mkdir -p "$bin"
bin=$(cd "$bin" && pwd)
cache=$(dirname "$bin")
jobs=${GO_BUILD_JOBS:-2}
export GOFLAGS=${GOFLAGS:--buildvcs=false}

log() { echo "==> testbin: $*"; }

# stamp_ok NAME VALUE: true when BIN/NAME exists and BIN/.NAME.stamp holds VALUE.
stamp_ok() { [[ -e "$bin/$1" && -f "$bin/.$1.stamp" && "$(cat "$bin/.$1.stamp")" == "$2" ]]; }

# timed NAME CMD...: runs CMD, records its wall time in BIN/BUILD_TIME.
timed() {
	local name=$1 start end
	shift
	start=$(date +%s)
	"$@"
	end=$(date +%s)
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $name $((end - start))s" >>"$bin/BUILD_TIME"
	log "$name built in $((end - start))s"
}

build_kubecp() {
	local minor=${K8S_VERSION#v1.}
	minor=${minor%%.*}
	local ldflags="-s -w" pkg
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
		ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	done
	(cd "$here/kubecp" && nice -n 10 go build -p "$jobs" -trimpath -ldflags "$ldflags" -o "$bin/kubecp.tmp" .)
	mv "$bin/kubecp.tmp" "$bin/kubecp"
}

go_install() { # go_install MODULE/CMD@VERSION [LDFLAGS]
	GOBIN=$bin nice -n 10 go install -p "$jobs" -trimpath -ldflags "-s -w ${2:-}" "$1"
}

kubecp_stamp="$K8S_VERSION etcd=$ETCD_VERSION $(cat "$here/kubecp/go.mod" "$here/kubecp/go.sum" "$here/kubecp/main.go" | sha256sum | cut -c1-16)"
if stamp_ok kubecp "$kubecp_stamp"; then
	log "kubecp $K8S_VERSION is current"
else
	log "building kubecp (Kubernetes $K8S_VERSION + etcd $ETCD_VERSION); cold: 4.5 min on 2 idle cores, 21 min under heavy load"
	timed "kubecp-$K8S_VERSION" build_kubecp
	echo "$kubecp_stamp" >"$bin/.kubecp.stamp"
fi
for name in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl; do
	ln -sf kubecp "$bin/$name"
done

if stamp_ok kwok "$KWOK_VERSION"; then
	log "kwok $KWOK_VERSION is current"
else
	log "building kwok $KWOK_VERSION"
	timed "kwok-$KWOK_VERSION" go_install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
	echo "$KWOK_VERSION" >"$bin/.kwok.stamp"
fi

# module_dir MODULE@VERSION: the module's read-only folder in the Go module cache (downloaded if needed).
module_dir() { go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'; }

kwok_dir=$(module_dir "sigs.k8s.io/kwok@$KWOK_VERSION")
mkdir -p "$cache/kwok"
for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
	pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
	cat "$kwok_dir/kustomize/stage/$stage.yaml"
	echo "---"
done >"$cache/kwok/stages.yaml"
log "kwok stages -> $cache/kwok/stages.yaml"

gie_dir=$(module_dir "sigs.k8s.io/gateway-api-inference-extension@$GIE_VERSION")
rm -rf "$cache/gie"
mkdir -p "$cache/gie"
cp "$gie_dir"/config/crd/bases/*.yaml "$cache/gie/"
chmod u+w "$cache"/gie/*.yaml
echo "$GIE_VERSION" >"$cache/gie/VERSION"
log "GIE $GIE_VERSION CRDs -> $cache/gie ($(ls "$cache/gie" | grep -c yaml) files)"

gateway_dir=$(module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")
rm -rf "$cache/gateway-api"
mkdir -p "$cache/gateway-api"
cp "$gateway_dir"/config/crd/standard/*.yaml "$cache/gateway-api/"
chmod u+w "$cache"/gateway-api/*.yaml
echo "$GATEWAY_API_VERSION" >"$cache/gateway-api/VERSION"
log "Gateway API $GATEWAY_API_VERSION CRDs -> $cache/gateway-api ($(ls "$cache/gateway-api" | grep -c yaml) files)"

# Helm last: the assets above are copied even when its build fails.
# Helm's own version string is a link-time variable too (`go install` alone reports just "v4.3").
helm_ldflags="-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
helm_ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
if stamp_ok helm "$HELM_VERSION $helm_ldflags"; then
	log "helm $HELM_VERSION is current"
else
	log "building helm $HELM_VERSION"
	timed "helm-$HELM_VERSION" go_install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" "$helm_ldflags"
	echo "$HELM_VERSION $helm_ldflags" >"$bin/.helm.stamp"
fi

"$bin/kubecp" kube-apiserver --version
"$bin/kwok" --version 2>/dev/null | head -1 || true
"$bin/helm" version --short
log "done; build times in $bin/BUILD_TIME"
