#!/usr/bin/env bash
# Vendor Swagger UI's files for /docs from the npm package swagger-ui-dist: scripts/update_swagger_ui.sh 5.35.0
set -euo pipefail
version="${1:?usage: $0 VERSION (of the npm package swagger-ui-dist)}"
target="$(cd "$(dirname "$0")/.." && pwd)/feature_store/server/static/swagger-ui"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$version" >/dev/null && tar xzf swagger-ui-dist-*.tgz)
for name in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css favicon-32x32.png LICENSE NOTICE; do
    cp "$work/package/$name" "$target/$name"
done
sed -i -E "s/\*\*[0-9]+\.[0-9]+\.[0-9]+\*\*/**$version**/" "$target/README.md"
echo "Swagger UI $version in $target"
