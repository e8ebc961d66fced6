#!/bin/sh
# Write docker/.env from docker/.env.example with a fresh random value for every empty secret.
#   sh docker/make-env.sh            # refuses to overwrite an existing docker/.env
#   sh docker/make-env.sh --force
# Needs openssl (or python3). Values are hex (URL-safe); the Fernet key is URL-safe base64.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
example="$here/.env.example"
target="$here/.env"

if [ -e "$target" ] && [ "${1:-}" != "--force" ]; then
  echo "$target exists; pass --force to replace it" >&2
  exit 1
fi

hex() {
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -hex 32
  else
    python3 -c 'import secrets; print(secrets.token_hex(32))'
  fi
}

fernet() {
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -base64 32 | tr '+/' '-_'
  else
    python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'
  fi
}

umask 077
tmp="$target.tmp.$$"
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    AIRFLOW_FERNET_KEY=) echo "AIRFLOW_FERNET_KEY=$(fernet)" ;;
    *_PASSWORD= | *_SECRET= | *_SECRET_KEY= | *_TOKEN=) echo "${line}$(hex)" ;;
    *) echo "$line" ;;
  esac
done <"$example" >"$tmp"
mv "$tmp" "$target"
echo "wrote $target (mode 600); keep it out of git"
