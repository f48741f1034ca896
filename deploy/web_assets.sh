#!/usr/bin/env bash
# Fetch (once) the Aladin Lite bundle that the event group page's interactive sky view loads
# (docs/web.md, "The group page"), from the npm registry, into broker/web/static/vendor/aladin-lite/.
#
# Aladin Lite (CDS, Strasbourg; Boch & Fernique 2014, ASP Conf. Ser. 485, 277) is GPL-3 licensed:
# it is not committed to this BSD repository (static/vendor/ is gitignored); it is downloaded here
# with its licence files next to it. The tarball is checked against the sha512 the registry
# publishes for this version (`npm view aladin-lite@3.8.2 dist.integrity`), pinned below, so a
# changed or corrupted download is refused and nothing is installed.
#
# Idempotent: when the installed version's stamp matches, it returns at once. Without network
# the group page still works and says that Aladin Lite is not installed.
# Usage: deploy/web_assets.sh [--force]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=3.8.2
INTEGRITY="sha512-/VGtxSWZ4StdKgwjmzqNkUY/3iTaBZJ5F6bN+nAfcK1NEATcAb2CYJX4U8FElpwYMgKrypYQV5KniRzhVbH+nA=="
REGISTRY=${MMA_BROKER_NPM_REGISTRY:-https://registry.npmjs.org}
URL="$REGISTRY/aladin-lite/-/aladin-lite-$VERSION.tgz"
DEST="$ROOT/broker/web/static/vendor/aladin-lite"
STAMP="$DEST/.installed"

if [ "${1:-}" != "--force" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$VERSION $INTEGRITY" ] \
   && [ -s "$DEST/aladin.js" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "web assets: downloading aladin-lite $VERSION from the npm registry" >&2
if ! curl -sSfL --retry 2 --max-time 120 -o "$tmp/a.tgz" "$URL"; then
  echo "web assets: warning: could not download aladin-lite $VERSION; the group page will show no" \
       "interactive sky view until deploy/web_assets.sh succeeds" >&2
  exit 0
fi
got="sha512-$(openssl dgst -sha512 -binary "$tmp/a.tgz" | base64 -w0)"
if [ "$got" != "$INTEGRITY" ]; then
  echo "web assets: error: aladin-lite $VERSION tarball does not match its pinned sha512; not installed" >&2
  exit 1
fi
mkdir -p "$tmp/x"
tar -xzf "$tmp/a.tgz" -C "$tmp/x" package/dist/aladin.js package/LICENSE package/COPYING \
  package/COPYING.LESSER package/package.json
rm -rf "$DEST.new"
mkdir -p "$DEST.new"
cp "$tmp/x/package/dist/aladin.js" "$tmp/x/package/LICENSE" "$tmp/x/package/COPYING" \
   "$tmp/x/package/COPYING.LESSER" "$tmp/x/package/package.json" "$DEST.new/"
echo "$VERSION $INTEGRITY" > "$DEST.new/.installed"
rm -rf "$DEST"
mv "$DEST.new" "$DEST"
echo "web assets: aladin-lite $VERSION installed (GPL-3; static/vendor/aladin-lite/)" >&2
