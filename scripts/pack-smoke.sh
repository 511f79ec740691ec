#!/usr/bin/env bash
# Pack the package, install the tarball globally into a throwaway prefix (as `npm i -g` would),
# and check the installed `oai-proxy` runs: --version, then serve + /health on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
tarball="$(npm pack --silent --pack-destination "$work" | tail -1)"
# Only what a user needs: no local scripts beside bin/oai-proxy.js, no tests, bench or scratch files.
listing="$(tar tzf "$work/$tarball")"
unexpected="$(grep -vE '^package/(bin/oai-proxy\.js|dist/.+|README\.md|CHANGELOG\.md|LICENSE|\.env\.example|package\.json)$' <<<"$listing" || true)"
[ -z "$unexpected" ] || { echo "pack-smoke: unexpected files in the package:"; echo "$unexpected"; exit 1; }
grep -qx 'package/LICENSE' <<<"$listing" || { echo "pack-smoke: no LICENSE in the package"; exit 1; }
npm i -g --prefix "$work/prefix" --allow-scripts=better-sqlite3 --prefer-offline --no-audit --no-fund "$work/$tarball" >/dev/null
bin="$work/prefix/bin/oai-proxy"
version="$("$bin" --version)"
[ "$version" = "$(node -p 'require("./package.json").version')" ] || { echo "pack-smoke: wrong version '$version'"; exit 1; }
HOME="$work" LOG_LEVEL=warn "$bin" serve --port 0 --db "$work/p.db" 2>"$work/err" &
pid=$!
for _ in $(seq 1 100); do
  url="$(grep -o 'http://127.0.0.1:[0-9]*' "$work/err" | head -1 || true)"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "pack-smoke: serve did not start"; cat "$work/err"; exit 1; }
node -e "fetch('$url/health').then(r=>r.json()).then(b=>{if(b.status!=='ok')process.exit(1);console.log('pack-smoke: ok', b.version)})"
kill -TERM "$pid"
wait "$pid"
