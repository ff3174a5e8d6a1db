#!/usr/bin/env bash
# Install or upgrade prodsmart-edge from this offline bundle; nothing is downloaded.
#   sudo ./install.sh                       the venv in /opt/prodsmart-edge, the systemd unit, the config
#   ./install.sh --prefix DIR --venv-only   only a venv in DIR (tests, or a custom layout)
# An upgrade keeps the database (/var/lib/prodsmart-edge), the config and the credentials; the
# previous venv stays in PREFIX.old until the next upgrade (see docs/upgrade.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
prefix=/opt/prodsmart-edge
venv_only=no
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --venv-only) venv_only=yes; shift ;;
    *) echo "usage: $0 [--prefix DIR] [--venv-only]" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
fail() { echo "install.sh: $*" >&2; exit 1; }

wheel="$(ls "$here"/wheels/prodsmart_edge-*.whl 2>/dev/null | head -n1)" \
  || fail "no prodsmart_edge wheel in $here/wheels: this is not a complete bundle"
[ -n "$wheel" ] || fail "no prodsmart_edge wheel in $here/wheels: this is not a complete bundle"
command -v "$python" >/dev/null || fail "$python is not installed (Debian: apt-get install python3 python3-venv)"
"$python" -c 'import ensurepip, venv' 2>/dev/null \
  || fail "$python cannot create a venv (Debian: apt-get install python3-venv)"
if [ -f "$here/TARGET" ]; then
  read -r want_python want_arch < "$here/TARGET"
  have="$("$python" -c 'import platform, sys; print("%d.%d %s" % (*sys.version_info[:2], platform.machine()))')"
  [ "$have" = "$want_python $want_arch" ] || fail "this bundle is for Python $want_python on $want_arch, but \
$python is Python $have: build one for this PC (TARGET_PYTHON=${have% *} TARGET_ARCH=${have#* } packaging/bundle.sh)"
fi
if [ "$venv_only" = no ] && command -v systemctl >/dev/null \
   && systemctl is-active --quiet prodsmart-edge 2>/dev/null; then
  fail "the prodsmart-edge service is running: stop it first (systemctl stop prodsmart-edge)"
fi

# A venv cannot be moved (its scripts name their own path): build it in place, keep the old one
# aside until the new one works, and put the old one back if anything fails.
rm -rf "$prefix.old"
[ -d "$prefix" ] && mv "$prefix" "$prefix.old"
restore() {
  echo "install.sh: installation failed; the previous version is kept" >&2
  rm -rf "$prefix"
  if [ -d "$prefix.old" ]; then mv "$prefix.old" "$prefix"; fi
}
trap restore ERR
"$python" -m venv "$prefix"
# Only this bundle's wheels: no index, and no pip configuration of the machine (its find-links).
PIP_CONFIG_FILE=/dev/null "$prefix/bin/python" -m pip install --isolated --quiet --no-index --no-cache-dir \
  --disable-pip-version-check --find-links "$here/wheels" "$wheel"
"$prefix/bin/prodsmart-edge" --version
trap - ERR

if [ "$venv_only" = yes ]; then
  exit 0
fi
[ "$(id -u)" -eq 0 ] || fail "installing the service needs root (or use --venv-only)"
etc=/etc/prodsmart-edge
install -d -m 0755 "$etc"
install -d -m 0700 "$etc/credentials"
install -m 0644 "$here/agent.example.yaml" "$etc/agent.example.yaml"
if [ ! -e "$etc/agent.yaml" ]; then
  install -m 0644 "$here/agent.example.yaml" "$etc/agent.yaml"
  echo "Wrote $etc/agent.yaml from the example: edit it for this line."
fi
sed "s#/opt/prodsmart-edge/#$prefix/#g" "$here/prodsmart-edge.service" > /etc/systemd/system/prodsmart-edge.service
chmod 0644 /etc/systemd/system/prodsmart-edge.service
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
for name in prodsmart_api_key prodsmart_api_secret; do
  [ -s "$etc/credentials/$name" ] || echo "Missing: $etc/credentials/$name (one line, mode 0600)."
done
echo "Installed. Check the config:  $prefix/bin/prodsmart-edge check $etc/agent.yaml"
echo "Start:  systemctl enable --now prodsmart-edge   Logs:  journalctl -u prodsmart-edge -f"
