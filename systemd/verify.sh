#!/usr/bin/env bash
# Verify the unit with systemd-analyze. The binary lives in /opt/prodsmart-edge only on a line PC,
# so a copy of the unit points at a stand-in executable; every other line is checked as shipped.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
printf '#!/bin/sh\nexit 0\n' > "$tmp/prodsmart-edge"
chmod +x "$tmp/prodsmart-edge"
sed "s#/opt/prodsmart-edge/bin/prodsmart-edge#$tmp/prodsmart-edge#g" "$here/prodsmart-edge.service" \
  > "$tmp/prodsmart-edge.service"
out="$(systemd-analyze verify --man=no "$tmp/prodsmart-edge.service" 2>&1 || true)"
# Outside a booted systemd (containers, CI) the default targets may be missing: not the unit's fault.
problems="$(printf '%s\n' "$out" | grep -v -e '^$' -e 'sysinit.target not found' -e 'Failed to create .*/start' || true)"
if [ -n "$problems" ]; then
  printf 'systemd-analyze verify found problems:\n%s\n' "$problems" >&2
  exit 1
fi
echo "systemd/prodsmart-edge.service: verified"
# The sandboxing score (0 = locked down, 10 = exposed): keep it at or below 2.0.
if ! score="$(systemd-analyze security --offline=yes --threshold=20 "$tmp/prodsmart-edge.service" 2>&1)"; then
  printf 'systemd-analyze security: the exposure is above 2.0:\n%s\n' "$(printf '%s\n' "$score" | tail -n 1)" >&2
  exit 1
fi
printf '%s\n' "$score" | tail -n 1
