#!/bin/sh
# Rebuild the dashboard's vendored JavaScript from the exact versions pinned in package-lock.json.
#   graphql-ws client -> static/vendor/graphql-ws.js (one ESM file bundled by esbuild)
#   uPlot             -> static/vendor/uPlot.iife.min.js + uPlot.min.css (copied as published)
# Run from anywhere: sh web/build.sh. Needs node + npm; the output is deterministic, so a rebuild of an
# unchanged lock file leaves `git status` clean.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../mpupload/server/web/static/vendor"
cd "$here"
npm ci --no-audit --no-fund --ignore-scripts
mkdir -p "$out"
version() { node -p "require('./node_modules/$1/package.json').version"; }
./node_modules/.bin/esbuild src/graphql-ws.js \
  --bundle --format=esm --platform=browser --target=es2020 --minify --legal-comments=none \
  --banner:js="/* graphql-ws $(version graphql-ws) client (MIT, see graphql-ws.LICENSE.md), bundled by web/build.sh */" \
  --outfile="$out/graphql-ws.js" --log-level=warning
cp node_modules/graphql-ws/LICENSE.md "$out/graphql-ws.LICENSE.md"
cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css "$out/"
cp node_modules/uplot/LICENSE "$out/uPlot.LICENSE"
echo "built $out: graphql-ws $(version graphql-ws), uPlot $(version uplot), esbuild $(version esbuild)"
