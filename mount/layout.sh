# The system locations mount/install.sh writes and mount/uninstall.sh removes:
# one list, sourced by both, so the two can never disagree.
# mount(8) looks for helpers in /sbin only, and the unit runs
# /usr/local/bin/butlerfs whatever the prefix.
# shellcheck shell=bash disable=SC2034
BIN_DIR=/usr/local/bin
HELPER_DIR=/sbin
UNIT_DIR=/etc/systemd/system
CONFIG_DIR=/etc/butlerfs
# The unit's Documentation= points here.
DOC_DIR=/usr/local/share/doc/butlerfs
# uninstall.sh removes PREFIX only when this file says an install made it.
MARKER=.butlerfs-install
