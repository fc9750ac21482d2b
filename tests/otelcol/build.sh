#!/usr/bin/env bash
# Builds a small OpenTelemetry Collector for the telemetry suite from Go modules: otelcol with
# the OTLP receiver, the debug exporter and contrib's file exporter (OTLP JSON lines the tests
# parse). The upstream `cmd/otelcorecol` module is not served by the module proxy, so this
# writes a wrapper module with its own `main`. Cached by version like the kube-env binaries; a
# second run prints the binary's path in milliseconds. Prints the binary path on stdout only.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${SWITCHYARD_OTELCOL_CACHE:-$HOME/.cache/switchyard/otelcol}"
dir="$cache_root/otelcol-$OTELCOL_VERSION"
binary="$dir/bin/otelcol-switchyard"
if [[ -x "$binary" ]]; then echo "$binary"; exit 0; fi

command -v go >/dev/null || { echo "go is required to build the collector" >&2; exit 1; }
mkdir -p "$dir/bin" "$dir/src"
exec 9>"$dir/.lock"
flock 9
if [[ -x "$binary" ]]; then echo "$binary"; exit 0; fi
export GOFLAGS=-mod=mod GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" CGO_ENABLED=0
echo "otelcol: building the collector $OTELCOL_VERSION (first run only; about two minutes)" >&2

cd "$dir/src"
cat > go.mod <<GOMOD
module switchyard.dev/otelcol-env

go 1.26

require (
	go.opentelemetry.io/collector/component $OTELCOL_CORE_VERSION
	go.opentelemetry.io/collector/confmap $OTELCOL_CORE_VERSION
	go.opentelemetry.io/collector/confmap/provider/envprovider $OTELCOL_CORE_VERSION
	go.opentelemetry.io/collector/confmap/provider/fileprovider $OTELCOL_CORE_VERSION
	go.opentelemetry.io/collector/confmap/provider/yamlprovider $OTELCOL_CORE_VERSION
	go.opentelemetry.io/collector/exporter $OTELCOL_CORE_VERSION
	go.opentelemetry.io/collector/exporter/debugexporter $OTELCOL_VERSION
	go.opentelemetry.io/collector/otelcol $OTELCOL_VERSION
	go.opentelemetry.io/collector/receiver $OTELCOL_CORE_VERSION
	go.opentelemetry.io/collector/receiver/otlpreceiver $OTELCOL_VERSION
	go.opentelemetry.io/collector/service $OTELCOL_VERSION
	github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter $OTELCOL_VERSION
)
GOMOD
cat > main.go <<'GO'
// A minimal OpenTelemetry Collector: OTLP in, debug and file exporters out.
package main

import (
	"log"

	"github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/confmap/provider/yamlprovider"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/exporter/debugexporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

func components() (otelcol.Factories, error) {
	var err error
	// Without a telemetry factory the v0.161 service refuses to start.
	factories := otelcol.Factories{Telemetry: otelconftelemetry.NewFactory()}
	if factories.Receivers, err = otelcol.MakeFactoryMap[receiver.Factory](otlpreceiver.NewFactory()); err != nil {
		return otelcol.Factories{}, err
	}
	if factories.Exporters, err = otelcol.MakeFactoryMap[exporter.Factory](
		debugexporter.NewFactory(), fileexporter.NewFactory()); err != nil {
		return otelcol.Factories{}, err
	}
	return factories, nil
}

func main() {
	settings := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{
			Command:     "otelcol-switchyard",
			Description: "OpenTelemetry Collector for Switchyard's tests",
			Version:     "0.161.0",
		},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{
					envprovider.NewFactory(), fileprovider.NewFactory(), yamlprovider.NewFactory(),
				},
				// The resolver refuses a bare path without a default scheme.
				DefaultScheme: "env",
			},
		},
	}
	if err := otelcol.NewCommand(settings).Execute(); err != nil {
		log.Fatal(err)
	}
}
GO
go mod tidy >&2
go build -trimpath -ldflags "-s -w" -o "$binary.tmp" .
mv "$binary.tmp" "$binary"
echo "$binary"
