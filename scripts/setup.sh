#!/usr/bin/env bash
# The one entry point a new machine needs (Debian 12, as root):
#
#   scripts/setup.sh mount   install everything, then mount the default volume on /mnt/nas
#   scripts/setup.sh test    install everything, then run lint and the whole test suite
#   scripts/setup.sh         install everything only
#
# Installs the Debian packages the project needs (FUSE, compilers for pyfuse3, the tools the
# tests drive), a virtualenv in .venv with fusenas and its Python dependencies, and a
# /usr/local/bin/fusenas link so that `fusenas` and fstab (mount.fuse3) find the command.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

apt_packages=(fuse3 libfuse3-dev pkg-config gcc make python3 python3-dev python3-venv patch
              fio rsync sqlite3 git attr util-linux procps psmisc kmod
              nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils)

missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "fusenas setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
scripts/install-pyfuse3.sh  # patched pyfuse3: fallocate, sync getxattr (docs/dependencies.md)
# Quiet unless it fails: setuptools' editable-install warnings are noise to a new user.
if ! .venv/bin/python -m pip install -q -e '.[dev]' > .venv/pip-install.log 2>&1; then
    cat .venv/pip-install.log >&2
    exit 1
fi
ln -sf "$top/.venv/bin/fusenas" /usr/local/bin/fusenas
modprobe fuse 2>/dev/null || true

case "${1:-}" in
    mount)
        mkdir -p /mnt/nas
        exec /usr/local/bin/fusenas /mnt/nas ;;
    test)
        exec make -s check ;;
    "") ;;
    *) echo "usage: scripts/setup.sh [mount|test]" >&2; exit 2 ;;
esac
