#!/bin/sh
# Download the real uv wheels (x86_64 and aarch64) that the bundle tests vendor.
# Run with network, before the (offline) test suite: the version is the one in uv.lock.
set -eu
cd "$(dirname "$0")/.."
dest=.cache/test-wheels
version=$(awk '/^name = "uv"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' uv.lock)
[ -n "$version" ] || { echo "fetch-test-wheels: no uv version in uv.lock" >&2; exit 1; }
mkdir -p "$dest"
for arch in x86_64 aarch64; do
    # pip download for a foreign platform does not fall back: list every manylinux tag.
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.11 --implementation py --abi none \
        --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" --platform "manylinux2014_$arch" \
        "uv==$version" -d "$dest"
done
ls -l "$dest"
