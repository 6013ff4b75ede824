#!/usr/bin/env bash
# Install butlerfs for every user of this machine, so that `butler`, `butlerfs`,
# `mount -t fuse.butlerfs`, fstab lines and the butlerfs@USER systemd units work.
# Run as root; running it again upgrades in place and changes nothing else.
# docs/admin-guide.md explains every step; mount/uninstall.sh reverses them.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: mount/install.sh [--prefix DIR] [--source DIR] [--passthrough]

  --prefix DIR   where the virtual environment goes (default /opt/butlerfs);
                 it must be readable by every user who mounts
  --source DIR   the butlerfs checkout to install (default: the one holding
                 this script)
  --passthrough  also build FUSE passthrough into PREFIX/venv (libfuse 3.17 and a
                 patched pyfuse3, tools/build-passthrough.sh; docs/passthrough.md):
                 root mounts then read datasets at the disk's speed.  Needs the
                 network once; if the build fails, the install goes on without it

Installs, as root:
  system packages   fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc
  PREFIX/venv       a venv from /usr/bin/python3 with butlerfs installed
  /usr/local/bin    butler and butlerfs (symbolic links into PREFIX/venv/bin)
  /sbin             mount.fuse.butlerfs and mount.butlerfs (the mount helper)
  /etc/systemd/system/butlerfs@.service, /etc/butlerfs/views/
  /usr/local/share/doc/butlerfs/admin-guide.md
  PREFIX/share/butlerfs/examples   example view files, fstab lines, a .mount unit
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=/opt/butlerfs
source_dir=$(dirname "$here")
passthrough=0
while (($#)); do
    case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --source) source_dir=${2:?--source needs a directory}; shift 2 ;;
    --source=*) source_dir=${1#*=}; shift ;;
    --passthrough) passthrough=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

# shellcheck source=mount/layout.sh
source "$here/layout.sh"
# Debian's interpreter, not a pyenv or conda build that may sit under a home
# directory other users cannot enter.
PYTHON_BASE=/usr/bin/python3
SYSTEM_PACKAGES=(fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc)
# --passthrough: apt-get source and dpkg-source unpack Debian's libfuse 3.17.
((passthrough)) && SYSTEM_PACKAGES+=(dpkg-dev)

say() { printf 'butlerfs install: %s\n' "$*"; }
die() { printf 'butlerfs install: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs system packages and files under /sbin and /etc)"
[[ -f $source_dir/pyproject.toml && -d $source_dir/butlerfs ]] \
    || die "$source_dir is not a butlerfs checkout (no pyproject.toml); give --source"
source_dir=$(cd "$source_dir" && pwd)
[[ $prefix == /* ]] || die "--prefix must be an absolute path, not '$prefix'"
prefix=${prefix%/}
if [[ -e $prefix && ! -e $prefix/$MARKER ]] && [[ -n $(ls -A "$prefix") ]]; then
    die "$prefix exists, is not empty and was not made by this script; choose another --prefix"
fi
# Everything installed must be readable by the users who mount.
umask 022

# 1. System packages (only the missing ones).
missing=()
for package in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    say "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    say "system packages present: ${SYSTEM_PACKAGES[*]}"
fi

# 2. The virtual environment, rebuilt if its interpreter is gone (a Python upgrade).
mkdir -p "$prefix"
touch "$prefix/$MARKER"
if [[ -x $prefix/venv/bin/python ]] && "$prefix/venv/bin/python" -c '' 2>/dev/null; then
    say "reusing the virtual environment $prefix/venv"
else
    rm -rf "$prefix/venv"
    say "creating the virtual environment $prefix/venv from $PYTHON_BASE"
    "$PYTHON_BASE" -m venv "$prefix/venv"
fi

# 3. The project, non-editable: the venv must not point into a checkout that
# may be under /root or be deleted.  pip builds in the source tree, so build
# from a copy and leave the checkout untouched.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
tar -C "$source_dir" --exclude=./.git --exclude=./.venv --exclude='*.egg-info' \
    --exclude=./build --exclude='__pycache__' --exclude='.*_cache' --exclude=./.hypothesis \
    -cf - . | tar -C "$build" -xf -
say "installing butlerfs from $source_dir into $prefix/venv"
"$prefix/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-warn-script-location "$build"
version=$("$prefix/venv/bin/python" -c 'import butler; print(butler.__version__)')
say "installed butlerfs $version"
if ((passthrough)); then
    # Its own messages say what it did; a failed build leaves PyPI's pyfuse3 and exits 0.
    "$source_dir/tools/build-passthrough.sh" "$prefix/venv"
    chmod -R a+rX "$prefix/venv"
fi

# 4. Commands on every user's PATH.
link() { # link TARGET NAME: a symbolic link, replacing only a link (never a real file)
    if [[ -e $2 && ! -L $2 ]]; then
        die "$2 exists and is not a symbolic link; move it away first"
    fi
    ln -sfn "$1" "$2"
    say "linked $2 -> $1"
}
link "$prefix/venv/bin/butler" "$BIN_DIR/butler"
link "$prefix/venv/bin/butlerfs" "$BIN_DIR/butlerfs"

# 5. The mount helper: mount(8) runs /sbin/mount.TYPE for `-t TYPE` and fstab.
helper=$HELPER_DIR/mount.fuse.butlerfs
sed "s|@PREFIX@|$prefix|g" "$here/mount.fuse.butlerfs" >"$build/helper"
install -m 0755 "$build/helper" "$helper"
say "installed the mount helper $helper (mount -t fuse.butlerfs, fstab)"
link mount.fuse.butlerfs "$HELPER_DIR/mount.butlerfs"

# 6. The systemd template unit and the directory of per-user views.
install -m 0644 "$here/butlerfs@.service" "$UNIT_DIR/butlerfs@.service"
say "installed $UNIT_DIR/butlerfs@.service"
if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    say "reloaded systemd"
fi
install -d -m 0755 "$CONFIG_DIR" "$CONFIG_DIR/views"
say "view files go in $CONFIG_DIR/views/USER.yaml (see $prefix/share/butlerfs/examples)"

# 7. Examples, next to the installation (never into /etc/butlerfs/views, where a
# file would define a view for a real user).
examples=$prefix/share/butlerfs/examples
install -d -m 0755 "$examples" "$examples/views"
install -m 0644 "$here/views/"*.yaml "$examples/views/"
install -m 0644 "$here/site.yaml" "$here/fstab.example" "$here/butlerfs-example.mount" "$examples/"
say "installed examples in $examples"
install -d -m 0755 "$DOC_DIR"
install -m 0644 "$source_dir/docs/admin-guide.md" "$DOC_DIR/"
say "installed $DOC_DIR/admin-guide.md"

# What an admin must still check by hand.
if [[ $(stat -c %a /dev/fuse 2>/dev/null) != 666 ]]; then
    say "note: /dev/fuse is not mode 0666, so only root can mount; udev normally makes it 0666"
fi
if ! grep -qx 'user_allow_other' /etc/fuse.conf 2>/dev/null; then
    say "note: /etc/fuse.conf lacks user_allow_other: users cannot mount with allow_other (the safe default)"
fi
say "done"
