#!/usr/bin/env bash
# Reverse mount/install.sh: remove what it installed, and only that.  Kept:
# the system packages (other software may use them), the view files an admin
# wrote in /etc/butlerfs/views, and every repository.  Run as root.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: mount/uninstall.sh [--prefix DIR] [--force]

  --prefix DIR   the prefix given to install.sh (default /opt/butlerfs)
  --force        uninstall even while this installation's daemons are running
                 (their mounts keep working until unmounted, but cannot be
                 mounted again)
EOF
}

prefix=/opt/butlerfs
force=0
while (($#)); do
    case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --force) force=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "uninstall.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=mount/layout.sh
source "$here/layout.sh"

say() { printf 'butlerfs uninstall: %s\n' "$*"; }
die() { printf 'butlerfs uninstall: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root"
[[ $prefix == /* ]] || die "--prefix must be an absolute path, not '$prefix'"
prefix=${prefix%/}

# Daemons of this installation: their argv[0] is the venv's interpreter.
daemons=()
for cmdline in /proc/[0-9]*/cmdline; do
    read -r -d '' first <"$cmdline" 2>/dev/null || continue
    if [[ $first == "$prefix/venv/bin/python"* ]]; then
        pid=${cmdline#/proc/}
        daemons+=("${pid%/cmdline}")
    fi
done
if ((${#daemons[@]})) && ((!force)); then
    die "processes of this installation are running (pids ${daemons[*]}), mounts perhaps:" \
        "unmount them (butlerfs umount MNT) or give --force"
fi

# The files every installation shares (the unit, the guide, /etc/butlerfs) go
# only if this prefix is the one in use: its helper, or none at all.
helper=$HELPER_DIR/mount.fuse.butlerfs
in_use=1
if [[ -e $helper ]] && ! grep -q "^PATH=$prefix/venv/bin:" "$helper"; then
    in_use=0
fi

unlink_into() { # unlink_into NAME DIR: remove NAME if it is a symbolic link into DIR
    if [[ -L $1 && $(readlink "$1") == "$2"/* ]]; then
        rm -f "$1"
        say "removed $1"
    elif [[ -e $1 || -L $1 ]]; then
        say "kept $1: it does not point into $2"
    fi
}
unlink_into "$BIN_DIR/butler" "$prefix/venv/bin"
unlink_into "$BIN_DIR/butlerfs" "$prefix/venv/bin"

if ((in_use)); then
    if [[ -L $HELPER_DIR/mount.butlerfs && $(readlink "$HELPER_DIR/mount.butlerfs") == mount.fuse.butlerfs ]]; then
        rm -f "$HELPER_DIR/mount.butlerfs"
        say "removed $HELPER_DIR/mount.butlerfs"
    fi
    if [[ -e $helper ]]; then
        rm -f "$helper"
        say "removed $helper"
    fi

    unit=$UNIT_DIR/butlerfs@.service
    if [[ -f $unit ]]; then
        enabled=$(find /etc/systemd/system -name 'butlerfs@*.service' -type l -printf '%f ' 2>/dev/null || true)
        if [[ -n $enabled ]]; then
            say "note: views still enabled (systemctl disable them): ${enabled% }"
        fi
        rm -f "$unit"
        say "removed $unit"
        if [[ -d /run/systemd/system ]]; then
            systemctl daemon-reload
            say "reloaded systemd"
        fi
    fi

    if [[ -f $DOC_DIR/admin-guide.md ]]; then
        rm -f "$DOC_DIR/admin-guide.md"
        rmdir "$DOC_DIR" 2>/dev/null || true
        say "removed $DOC_DIR/admin-guide.md"
    fi

    if [[ -d $CONFIG_DIR/views ]] && rmdir "$CONFIG_DIR/views" 2>/dev/null; then
        rmdir "$CONFIG_DIR" 2>/dev/null || true
        say "removed $CONFIG_DIR/views (it was empty)"
    elif [[ -d $CONFIG_DIR/views ]]; then
        say "kept $CONFIG_DIR/views: it holds view files"
    fi
else
    say "kept $helper, the unit, the guide and $CONFIG_DIR: they belong to the installation in use, not to $prefix"
fi

if [[ -e $prefix/$MARKER ]]; then
    rm -rf "$prefix"
    say "removed $prefix"
elif [[ -e $prefix ]]; then
    say "kept $prefix: install.sh did not make it"
fi
say "done"
