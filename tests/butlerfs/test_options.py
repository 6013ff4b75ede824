"""``-o`` mount options (no mount needed)."""

from __future__ import annotations

import pytest

from butler.errors import ConfigError
from butlerfs import options


def test_defaults_name_the_source_and_type() -> None:
    parsed = options.parse([], "/data/agg.yaml")
    assert parsed.fuse == {"fsname=/data/agg.yaml", "subtype=butlerfs", "default_permissions"}
    assert not parsed.read_only
    assert parsed.policy == ()


def test_ro_and_rw_last_wins() -> None:
    assert options.parse(["rw,ro"], "s").read_only
    assert "ro" in options.parse(["ro"], "s").fuse
    assert not options.parse(["ro", "rw"], "s").read_only


def test_fstab_and_systemd_options_are_ignored() -> None:
    parsed = options.parse(["noauto,nofail,_netdev,x-systemd.automount,defaults,relatime"], "s")
    assert parsed == options.parse([], "s")


def test_kernel_options_pass_through() -> None:
    parsed = options.parse(["allow_other,nosuid,fsname=mine,subtype=other"], "s")
    assert {"allow_other", "nosuid", "fsname=mine", "subtype=other"} <= parsed.fuse
    assert "fsname=s" not in parsed.fuse


def test_policy_options() -> None:
    assert options.parse(["policy.on_exists=error"], "s").policy == ("on_exists=error",)


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigError, match="'bogus'"):
        options.parse(["ro,bogus"], "s")


def test_commas_in_the_source_are_escaped_for_libfuse() -> None:
    assert "fsname=/data/a\\,b.yaml" in options.parse([], "/data/a,b.yaml").fuse


def test_allow_users_needs_allow_other_and_is_not_passed_to_fuse() -> None:
    parsed = options.parse(["allow_other,allow_users=alice:1001"], "s")
    assert parsed.allow_users == ("alice", "1001")
    assert parsed.allow_other
    assert not any(option.startswith("allow_users") for option in parsed.fuse)
    with pytest.raises(ConfigError, match="needs allow_other"):
        options.parse(["allow_users=alice"], "s")


def test_passthrough_is_auto_unless_turned_off() -> None:
    assert options.parse([], "s").passthrough == "auto"
    parsed = options.parse(["passthrough=off"], "s")
    assert parsed.passthrough == "off"
    assert not any(option.startswith("passthrough") for option in parsed.fuse)
    with pytest.raises(ConfigError, match="passthrough=on: give one of auto, off"):
        options.parse(["passthrough=on"], "s")
