#!/usr/bin/env bash
# Installs pyfuse3 3.5.0 built from its sdist with patches/pyfuse3-3.5.0-fusenas.patch into
# .venv: fallocate(2) reaches FusenasOperations.fallocate, getxattr requests are answered
# synchronously by FusenasOperations.getxattr_sync, and the session loop reads a queued
# request before it waits for the FUSE fd (see docs/dependencies.md).
# Called by scripts/setup.sh before the project's own `pip install`; needs the venv, gcc,
# pkg-config, libfuse3-dev and patch. Does nothing when the venv's pyfuse3 already is this
# build (pyfuse3.fusenas_patch >= $revision), so running it again is quick; an older build is
# rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
py="$top/.venv/bin/python"
# Both from the module the mount checks them with (the patch sets pyfuse3.fusenas_patch to
# its revision; bump the patch and PYFUSE3_PATCH_REVISION together).
constant() { sed -n "s/^$1 = \"\{0,1\}\([0-9.]*\)\"\{0,1\}$/\1/p" "$top/fusenas/fs/pyfuse3_patch.py"; }
version=$(constant PYFUSE3_VERSION)
revision=$(constant PYFUSE3_PATCH_REVISION)
patchfile="$top/patches/pyfuse3-$version-fusenas.patch"
is_patched() {
    "$py" -c 'import sys, pyfuse3
sys.exit(0 if getattr(pyfuse3, "fusenas_patch", 0) >= int(sys.argv[1]) else 1)' "$revision" \
        2>/dev/null
}

if is_patched; then
    exit 0
fi

echo "fusenas setup: building pyfuse3 $version with patches/${patchfile##*/}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download -q --no-deps --no-binary pyfuse3 -d "$tmp" "pyfuse3==$version"
tar -xzf "$tmp/pyfuse3-$version.tar.gz" -C "$tmp"
src="$tmp/pyfuse3-$version"
patch -s -p1 -d "$src" < "$patchfile"
# The sdist ships the C that Cython generated from the unpatched sources: drop it so the
# build runs Cython on the patched .pyx/.pxi.
rm -f "$src/src/pyfuse3/__init__.c"
# Build first, then swap the installed copy in one quick step (the venv may be in use).
"$py" -m pip wheel -q --no-deps -w "$tmp/wheel" "$src"
whl=$(echo "$tmp"/wheel/pyfuse3-*.whl)
"$py" -m pip install -q --no-deps --force-reinstall "$whl"
"$py" -m pip install -q "$whl"  # its dependencies (trio), if the venv is new

if ! is_patched; then
    echo "fusenas setup: the built pyfuse3 is not patch revision $revision" >&2
    exit 1
fi
