#!/usr/bin/env bash
# Build the offline bundle for air-gapped line PCs, on a machine that reaches PyPI:
#   packaging/bundle.sh OUTDIR
# OUTDIR gets: wheels/ (prodsmart-edge and every dependency, for the target Python and platform),
# install.sh (venv + pip install --no-index), prodsmart-edge.service, agent.example.yaml,
# Dockerfile (the image installs from wheels/), README.txt. Copy OUTDIR to the line PC and run
# `sudo ./install.sh` there. The target defaults to this machine's architecture and Python 3.11
# (Debian 12); set TARGET_PYTHON=3.12 or TARGET_ARCH=aarch64 to build for another line PC.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$1"
python="${PYTHON:-python3}"
target_python="${TARGET_PYTHON:-3.11}"
target_arch="${TARGET_ARCH:-$(uname -m)}"
abi="cp${target_python/./}"
# glibc 2.17 (manylinux2014) up to 2.36 (Debian 12): the wheels any Debian 12 line PC can load.
platforms=()
for minor in 36 35 34 33 32 31 28 27 26 17; do
  platforms+=(--platform "manylinux_2_${minor}_${target_arch}")
done
platforms+=(--platform "manylinux2014_${target_arch}" --platform "linux_${target_arch}")

# Replacing OUTDIR: only an earlier bundle, never a folder of something else (`bundle.sh .`).
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ] && [ ! -f "$out/TARGET" ] && [ ! -d "$out/wheels" ]; then
  echo "bundle.sh: $out exists and is not a bundle: give a new or empty folder" >&2
  exit 1
fi
rm -rf "$out"
mkdir -p "$out/wheels"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== the project's wheel"
# A copy of the sources, so that building leaves no build/ or *.egg-info in the checkout.
mkdir -p "$work/src"
cp -r "$root/pyproject.toml" "$root/README.md" "$root/agent" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$out/wheels" "$work/src"
wheel="$(ls "$out"/wheels/prodsmart_edge-*.whl)"

echo "== its dependencies, as wheels for CPython $target_python on $target_arch (binary only)"
"$python" -m pip download --quiet --dest "$out/wheels" --only-binary=:all: \
  --python-version "$target_python" --implementation cp --abi "$abi" --abi abi3 --abi none \
  "${platforms[@]}" "$wheel"

install -m 0755 "$root/packaging/install.sh" "$out/install.sh"
install -m 0644 "$root/systemd/prodsmart-edge.service" "$out/prodsmart-edge.service"
install -m 0644 "$root/config/agent.example.yaml" "$out/agent.example.yaml"
install -m 0644 "$root/Dockerfile" "$out/Dockerfile"
version="$(basename "$wheel" | cut -d- -f2)"
# What install.sh checks the line PC's python3 against (the compiled wheels fit only that).
echo "$target_python $target_arch" > "$out/TARGET"
cat > "$out/README.txt" <<TXT
prodsmart-edge $version offline bundle: CPython $target_python, $target_arch ($(date -u +%Y-%m-%d)).
Install or upgrade on the line PC (no network needed):  sudo ./install.sh
Then: edit /etc/prodsmart-edge/agent.yaml, put the API key and secret in
/etc/prodsmart-edge/credentials/, and start:  sudo systemctl enable --now prodsmart-edge
Container image instead:  docker build -t prodsmart-edge:$version .
TXT
echo "bundle: $out ($(ls "$out/wheels" | wc -l) wheels, $(du -sh "$out" | cut -f1))"
