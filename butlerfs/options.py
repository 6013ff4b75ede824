"""``-o`` mount options: what FUSE gets, what we act on, what mount(8) leaves for us to ignore.

fstab and ``mount -t fuse.butlerfs`` hand the daemon every option of the
line, including those meant for mount(8) or systemd; refusing them would make
the fstab line fail, so they are accepted and ignored.  An option nobody
knows is refused with its name (a typo must not pass silently).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from butler.errors import ConfigError

#: For mount(8), systemd or fstab's bookkeeping, or access-time flags libfuse does not
#: know (it fails on them): never reach FUSE.
IGNORED = frozenset(
    {
        "defaults",
        "auto",
        "noauto",
        "user",
        "nouser",
        "users",
        "owner",
        "nofail",
        "_netdev",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "diratime",
        "nodiratime",
        "lazytime",
        "nolazytime",
    }
)
IGNORED_PREFIXES = ("x-", "comment=")

#: Kernel and libfuse options passed through unchanged.
PASSED = frozenset(
    {
        "allow_other",
        "allow_root",
        "auto_unmount",
        "nosuid",
        "suid",
        "nodev",
        "dev",
        "noexec",
        "exec",
        "noatime",
        "atime",
        "sync",
        "async",
        "dirsync",
    }
)
PASSED_KEYS = frozenset({"fsname", "subtype"})

#: ``-o policy.on_exists=error``: the same as ``--policy on_exists=error`` (fstab has no flags).
POLICY_PREFIX = "policy."

#: ``-o xattr=MODE``: how getxattr answers (docs/mount.md, "Extended attributes and ls -l").
#:   notsup  the default: ``user.butler.*`` of datasets; other ``user.*`` names ENODATA;
#:           names outside ``user.`` (``security.selinux``, POSIX ACLs, ``trusted.*``)
#:           EOPNOTSUPP, as on a filesystem without ACLs or security labels: ``ls -l``
#:           asks the first file only
#:   nosys   no extended attributes at all: ENOSYS, after which the kernel answers every
#:           getxattr itself, without asking the daemon
XATTR_MODES = ("notsup", "nosys")
#: Accepted for fstab lines written for an older butlerfs: ``butler`` was the default.
XATTR_ALIASES = {"butler": "notsup"}

#: ``-o passthrough=MODE`` (docs/mount.md, "Reads at the kernel's speed"): ``auto`` uses
#: FUSE passthrough for committed datasets opened for reading where the kernel grants it
#: and the daemon may use it; ``off`` serves every read through the daemon.
PASSTHROUGH_MODES = ("auto", "off")

#: Options of butlerfs itself, without a value (docs/mount.md, "Mount options").
#:   showmeta    the root lists .repos, .versions and .butler (hidden by default, so that
#:               find, du and rsync see each dataset once)
#:   autodefine  a file written at a genre's template path with an unknown dataset type
#:               defines that type (by default: refused, EACCES, with how to define it)
FLAGS = ("showmeta", "autodefine")


@dataclass(frozen=True)
class MountOptions:
    fuse: frozenset[str]  # for pyfuse3.init
    read_only: bool
    policy: tuple[str, ...]  # KEY=VALUE assignments
    allow_users: tuple[str, ...] = ()  # user names or uids let in besides owner and root
    xattr: str = "notsup"  # one of XATTR_MODES
    show_meta: bool = False
    autodefine: bool = False
    log_file: str | None = None  # -o log=FILE
    passthrough: str = "auto"  # one of PASSTHROUGH_MODES

    @property
    def allow_other(self) -> bool:
        return "allow_other" in self.fuse


def split(values: Iterable[str]) -> list[str]:
    """``["ro,allow_other", "noauto"]`` → ``["ro", "allow_other", "noauto"]``."""
    return [option.strip() for value in values for option in value.split(",") if option.strip()]


def parse(values: Iterable[str], fsname: str) -> MountOptions:
    """The options of every ``-o`` given; raises ConfigError naming an unknown one."""
    read_only = False
    fuse: dict[str, str] = {"fsname": fsname, "subtype": "butlerfs"}
    flags = {"default_permissions"}  # always: the kernel checks modes (SPEC §8, per-user views)
    policy = []
    allow_users: list[str] = []
    xattr = "notsup"
    flags_given: set[str] = set()
    log_file = None
    passthrough = "auto"
    for option in split(values):
        key, sep, value = option.partition("=")
        if option in ("ro", "rw"):
            read_only = option == "ro"
        elif option in IGNORED or option.startswith(IGNORED_PREFIXES):
            continue
        elif option == "default_permissions" or option in PASSED:
            flags.add(option)
        elif sep and key in PASSED_KEYS:
            fuse[key] = value
        elif option.startswith(POLICY_PREFIX) and sep:
            policy.append(option.removeprefix(POLICY_PREFIX))
        elif key == "allow_users" and sep:
            allow_users.extend(name for name in value.split(":") if name)
        elif key == "xattr" and sep:
            value = XATTR_ALIASES.get(value, value)
            if value not in XATTR_MODES:
                raise ConfigError(
                    f"xattr={value}: give one of {', '.join(XATTR_MODES)} "
                    "(see 'Mount options' in docs/mount.md)"
                )
            xattr = value
        elif key == "passthrough" and sep:
            if value not in PASSTHROUGH_MODES:
                raise ConfigError(
                    f"passthrough={value}: give one of {', '.join(PASSTHROUGH_MODES)} "
                    "(see 'Mount options' in docs/mount.md)"
                )
            passthrough = value
        elif option in FLAGS:
            flags_given.add(option)
        elif key == "log" and sep:
            if not value:
                raise ConfigError("log=: give the file the daemon should log to")
            log_file = value
        else:
            raise ConfigError(
                f"unknown mount option {option!r}; see 'Mount options' in docs/mount.md"
            )
    if read_only:
        flags.add("ro")
    if allow_users and "allow_other" not in flags:
        raise ConfigError(
            "allow_users=... needs allow_other as well (-o allow_other,allow_users=...)"
        )
    # libfuse splits option values at commas: escape them (a path may hold one).
    keyed = {f"{key}={value.replace(',', chr(92) + ',')}" for key, value in fuse.items()}
    return MountOptions(
        frozenset(flags | keyed),
        read_only,
        tuple(policy),
        tuple(allow_users),
        xattr,
        show_meta="showmeta" in flags_given,
        autodefine="autodefine" in flags_given,
        log_file=log_file,
        passthrough=passthrough,
    )
