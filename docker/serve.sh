#!/bin/sh
# The feature server in docker compose. It listens on 0.0.0.0 inside the container (so that the published port
# reaches it), and beyond loopback it refuses to serve without API keys: this gives it one. FS_API_KEY, when
# set, is the key (reads and pushes); otherwise a random key is made once and kept in $FS_API_KEY_FILE, on a
# volume, so that `docker compose up` needs no environment. Read it with
#   docker compose exec -T feature-server cat /run/feature-store/api_key
# Arguments are passed on to `feature-store serve` (the last of a repeated option wins).
set -eu
key_file="${FS_API_KEY_FILE:-/run/feature-store/api_key}"
if [ -z "${FS_API_KEY:-}" ]; then
    if [ ! -s "$key_file" ]; then
        mkdir -p "$(dirname "$key_file")"
        (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(32))' > "$key_file")
        echo "feature-server: generated an API key in $key_file (docker compose exec -T feature-server cat $key_file)" >&2
    fi
    FS_API_KEY="$(cat "$key_file")"
fi
FEATURE_STORE_API_KEYS="$FS_API_KEY:read,write"
export FEATURE_STORE_API_KEYS
exec feature-store --repo "${FS_REPO:-/app/feature_repo}" serve --host 0.0.0.0 --port 6566 --workers 2 "$@"
