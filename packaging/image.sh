#!/usr/bin/env bash
# Build the container image without any registry, and smoke-test it:
#   packaging/image.sh
# 1. the offline bundle (packaging/bundle.sh; or reuse one: BUNDLE=DIR),
# 2. a local Debian 12 base image from Debian packages with mmdebstrap, imported into podman as
#    localhost/prodsmart-edge-base:bookworm (reused if present; REBUILD_BASE=1 rebuilds it; or
#    BASE=IMAGE uses another base, e.g. docker.io/library/python:3.11-slim-bookworm),
# 3. the image from the Dockerfile (installed from the wheelhouse, no network), tagged
#    prodsmart-edge:latest,
# 4. the smoke stage (packaging/smoke/) built on it: check, the agent against the sandbox for ~15 s,
#    /healthz 200, SIGTERM exit 0, as the image's user with a read-only config. Any failure fails.
# The Debian mirror is the one apt uses on this machine (/etc/apt/sources.list*), or DEBIAN_MIRROR.
# Needs podman and mmdebstrap (and uidmap when not run as root). Work files: BUILD_DIR (build/image).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$root/build/image}"
suite=bookworm
base_tag=localhost/prodsmart-edge-base:$suite
image=localhost/prodsmart-edge:latest
# --layers=false: no build-stage images left behind (CI builds from nothing anyway).
podman_build=(podman build --isolation chroot --format docker --layers=false)
mkdir -p "$build"
build="$(cd "$build" && pwd)"
t0=$SECONDS
elapsed() { echo "$((SECONDS - $1)) s"; }
image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
# The image a new build replaced is left untagged: remove it (unless something still uses it).
drop_replaced() {
  if [ -n "$2" ] && [ "$2" != "$(image_id "$1")" ]; then
    podman rmi "$2" >/dev/null 2>&1 || true
  fi
}

# The host's Debian sources for $suite (main, updates, security) as one deb822 file; other
# repositories (vendors' apt repos) are left out.
debian_sources() {
  local out="$1" f
  : > "$out"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    grep -E "^deb[[:space:]].*[[:space:]]$suite(-updates|-security)?[[:space:]]" "$f" >> "$out.list" || true
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" 'BEGIN { RS = ""; ORS = "\n\n" }
      $0 ~ "(^|\n)Types:[^\n]*deb( |\n|$)" && $0 ~ "(^|\n)Suites:[^\n]*[ ]" suite "([ -]|\n|$)" &&
      $0 !~ "(^|\n)Enabled: *no" { print }' "$f" >> "$out"
  done
  if [ -s "$out.list" ]; then
    cat "$out.list" >> "$out"
  fi
  rm -f "$out.list"
}

echo "== 1/4 the offline bundle"
t=$SECONDS
if [ -n "${BUNDLE:-}" ] && ls "$BUNDLE"/wheels/prodsmart_edge-*.whl >/dev/null 2>&1; then
  bundle="$(cd "$BUNDLE" && pwd)"
  echo "reusing $bundle"
else
  bundle="$build/bundle"
  bash "$root/packaging/bundle.sh" "$bundle"
fi
echo "bundle: $(elapsed $t)"

echo "== 2/4 the Debian $suite base image"
t=$SECONDS
if [ -n "${BASE:-}" ]; then
  base="$BASE"
  echo "using $base"
elif [ -z "${REBUILD_BASE:-}" ] && podman image exists "$base_tag"; then
  base="$base_tag"
  echo "reusing $base (REBUILD_BASE=1 rebuilds it)"
else
  base="$base_tag"
  old_base="$(image_id "$base")"
  mirrors=()
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    mirrors=("$DEBIAN_MIRROR")
  else
    debian_sources "$build/debian.sources"
    if [ -s "$build/debian.sources" ]; then
      mirrors=("$build/debian.sources")
      echo "Debian mirror(s) from apt: $(grep -h -o -E '(URIs:|^deb) +[^ ]+' "$build/debian.sources" | awk '{print $2}' | sort -u | tr '\n' ' ')"
    fi
  fi
  # Only what the agent needs: python3 with venv (ensurepip), useradd, CA certificates; no
  # documentation, manuals or translations.
  mmdebstrap --variant=essential --include=python3,python3-venv,passwd,ca-certificates \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$suite" "$build/base.tar" "${mirrors[@]}"
  podman import --change 'CMD ["/bin/bash"]' "$build/base.tar" "$base" >/dev/null
  rm -f "$build/base.tar"
  drop_replaced "$base" "$old_base"
fi
echo "base $base: $(podman image inspect --format '{{.Size}}' "$base" | awk '{printf "%.0f MB", $1/1e6}'), $(elapsed $t)"

echo "== 3/4 the image $image"
t=$SECONDS
old_image="$(image_id "$image")"
"${podman_build[@]}" --build-arg "BASE=$base" -f "$root/Dockerfile" -t "$image" "$bundle"
drop_replaced "$image" "$old_image"
echo "image $image: $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'), $(elapsed $t)"

echo "== 4/4 the smoke stage"
t=$SECONDS
smoke="$build/smoke"
rm -rf "$smoke"
mkdir -p "$smoke"
cp "$root/packaging/smoke/smoke.py" "$smoke/"
# The image's HEALTHCHECK (kept only in the docker format), for the smoke stage to run it.
podman image inspect --format '{{json .Config.Healthcheck}}' "$image" > "$smoke/healthcheck.json"
if ! grep -q '"Test"' "$smoke/healthcheck.json"; then
  echo "image.sh: the image has no HEALTHCHECK (was it built in the OCI format?)" >&2
  exit 1
fi
# Two free loopback ports (chroot builds share this machine's network): the sandbox, the metrics.
read -r sandbox_port metrics_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
sed -e "s/@SANDBOX_PORT@/$sandbox_port/" -e "s/@METRICS_PORT@/$metrics_port/" \
  "$root/packaging/smoke/agent.smoke.yaml" > "$smoke/agent.yaml"
"${podman_build[@]}" --build-arg "IMAGE=$image" -f "$root/packaging/smoke/Containerfile" \
  -t localhost/prodsmart-edge-smoke:latest "$smoke"
podman rmi localhost/prodsmart-edge-smoke:latest >/dev/null
echo "smoke: $(elapsed $t)"
echo "packaging/image.sh: $image built and smoke-tested in $(elapsed $t0)"
