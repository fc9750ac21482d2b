#!/usr/bin/env bash
# Builds the real cluster binaries the e2e suites run: kube-apiserver, kube-controller-manager
# and kubectl from the k8s.io/kubernetes Go module (a wrapper module that pins every k8s.io/*
# staging module with `replace` lines), etcd from go.etcd.io/etcd/server/v3, and helm from
# helm.sh/helm/v3. Binaries are cached by version; a second run prints the cached directory
# in milliseconds. Prints the bin directory on stdout (and nothing else).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${SWITCHYARD_KUBE_CACHE:-$HOME/.cache/switchyard/kube}"
dir="$cache_root/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
bin="$dir/bin"
want=(kube-apiserver kube-controller-manager kubectl etcd helm)
have_all() { for b in "${want[@]}"; do [[ -x "$bin/$b" ]] || return 1; done; }
if have_all; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "go is required to build the cluster binaries" >&2; exit 1; }
mkdir -p "$bin" "$dir/src"
# GOTOOLCHAIN=auto: an older Go fetches the toolchain a module needs from the module proxy.
export GOFLAGS=-mod=mod GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" CGO_ENABLED=0
log() { echo "kube-env: $*" >&2; }

build_kube() {
  local m="$dir/src/kube" staging_minor="v0.${KUBERNETES_VERSION#v1.}"
  mkdir -p "$m" && cd "$m"
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  {
    echo "module switchyard.dev/kube-env"
    echo
    echo "go $(sed -n 's/^go \([0-9.]*\).*/\1/p' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    grep -oE '^\s+k8s\.io/[A-Za-z0-9._-]+ => \./staging' "$gomod" | awk -v v="$staging_minor" '{print "replace " $1 " => " $1 " " v}'
  } > go.mod
  go mod download k8s.io/kubernetes
  local pkg="k8s.io/component-base/version" minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  local ld="-s -w -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  for c in kube-apiserver kube-controller-manager kubectl; do
    [[ -x "$bin/$c" ]] && continue
    log "building $c $KUBERNETES_VERSION (first run only; several minutes)"
    go get "k8s.io/kubernetes/cmd/$c@$KUBERNETES_VERSION" >/dev/null 2>&1 || true
    go build -trimpath -ldflags "$ld" -o "$bin/$c" "k8s.io/kubernetes/cmd/$c"
  done
}

build_etcd() {
  [[ -x "$bin/etcd" ]] && return
  local m="$dir/src/etcd"
  mkdir -p "$m" && cd "$m"
  cat > go.mod <<GOMOD
module switchyard.dev/etcd-env

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GOMOD
  cat > main.go <<'GO'
// etcd's own main, built from the server module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  log "building etcd $ETCD_VERSION"
  go mod tidy >/dev/null 2>&1
  go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .
}

build_helm() {
  [[ -x "$bin/helm" ]] && return
  local m="$dir/src/helm"
  mkdir -p "$m" && cd "$m"
  printf 'module switchyard.dev/helm-env\n\ngo 1.24\n\nrequire helm.sh/helm/v3 %s\n' "$HELM_VERSION" > go.mod
  log "building helm $HELM_VERSION"
  go mod download helm.sh/helm/v3
  go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >/dev/null 2>&1 || true
  go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$bin/helm" helm.sh/helm/v3/cmd/helm
}

build_etcd
build_helm
build_kube
have_all || { echo "kube-env: some binaries are missing in $bin" >&2; exit 1; }
echo "$bin"
