"""Tests for butler.template: both directions of the path mapping, and hostile input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from butler.errors import ConfigError, InvalidDataIdError
from butler.template import (
    KEY_TYPES,
    Template,
    coerce_data_id,
    coerce_value,
    validate_dataset_type_name,
)

VISIT_TEMPLATE = "{datasetType}/v{visit:07d}/{datasetType}-v{visit:07d}-c{ccd:03d}.fits"
VISIT_KEYS: dict[str, type] = {"visit": int, "ccd": int}
TRACT_TEMPLATE = "{datasetType}/{filter:s}/t{tract:d}-{patch}.fits"
TRACT_KEYS: dict[str, type] = {"tract": int, "filter": str, "patch": str}

VISIT = Template(VISIT_TEMPLATE, VISIT_KEYS)
TRACT = Template(TRACT_TEMPLATE, TRACT_KEYS)

dataset_types = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,20}", fullmatch=True)
# Well past 7 digits, and negative: no int field in these templates starts a component.
# The whole range a registry holds (signed 64-bit); beyond it is refused (test_hostile_dataids).
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
safe_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"], exclude_characters="/"),
    min_size=1,
    max_size=40,
).filter(lambda text: text[0] not in ".-")
control_chars = st.sampled_from([chr(code) for code in [*range(32), *range(0x7F, 0xA0)]])
hostile_text = st.one_of(
    st.sampled_from(["", ".", "..", "/", "a/b", "../etc", "\x00", "a\x00b", "a\x7f"]),
    st.builds(lambda text: "." + text, safe_text),
    st.builds(lambda text: "-" + text, safe_text),
    st.builds(lambda a, b: a + "/" + b, safe_text, safe_text),
    st.builds(lambda a, c, b: a + c + b, safe_text, control_chars, safe_text),
    st.builds(lambda text: text * (256 // len(text.encode()) + 1), safe_text),
)


@given(dataset_types, ints, ints)
def test_visit_round_trip(dataset_type: str, visit: int, ccd: int) -> None:
    data_id = {"visit": visit, "ccd": ccd}
    path = VISIT.render(dataset_type, data_id)
    assert VISIT.parse(path) == (dataset_type, data_id)


@given(dataset_types, ints, safe_text, safe_text)
def test_tract_round_trip(dataset_type: str, tract: int, filter_: str, patch: str) -> None:
    data_id = {"tract": tract, "filter": filter_, "patch": patch}
    path = TRACT.render(dataset_type, data_id)
    parsed = TRACT.parse(path)
    assert parsed == (dataset_type, data_id)
    assert list(parsed[1]) == list(TRACT_KEYS)  # ordered as the keys, not as the path


@given(
    st.sampled_from(["", "d", "03d", "07d", "5d", "01d"]),
    st.sampled_from(["-", "_", "0", "-0"]),
    st.one_of(safe_text, st.from_regex(r"[a-z0-9][a-z0-9\-]{0,5}", fullmatch=True)),
    ints,
)
def test_ambiguous_templates_still_parse_what_they_render(
    spec: str, separator: str, name: str, number: int
) -> None:
    # The data ID may come back split differently, but the path must never become invisible.
    keys: dict[str, type] = {"name": str, "number": int}
    template = Template(f"x{{name}}{separator}{{number:{spec}}}/{{name}}", keys)
    path = template.render("raw", {"name": name, "number": number})
    parsed = template.parse(path)
    assert parsed is not None
    assert template.render("raw", parsed[1]) == path


def test_ambiguous_split_backtracks_past_unsafe_values() -> None:
    template = Template("{a}-{b}/x", {"a": str, "b": str})
    assert template.parse("0--0/x") == (None, {"a": "0-", "b": "0"})
    int_template = Template("{a}-{n:03d}", {"a": str, "n": int})
    assert int_template.parse("b--005") == (None, {"a": "b-", "n": 5})


@given(st.sampled_from(["filter", "patch"]), hostile_text)
def test_hostile_values_never_render(key: str, value: str) -> None:
    data_id: dict[str, object] = {"tract": 1, "filter": "r", "patch": "p"}
    data_id[key] = value
    with pytest.raises(InvalidDataIdError, match=key):
        TRACT.render("deep", data_id)


@given(hostile_text.filter(lambda text: not text.lstrip("-").isdigit()))
def test_hostile_values_rejected_for_int_keys(value: str) -> None:
    with pytest.raises(InvalidDataIdError, match="visit"):
        VISIT.render("calexp", {"visit": value, "ccd": 1})


@pytest.mark.parametrize(
    "value", ["\x1f", "\x7f", "\x85", "\ud800", "a" * 256, "é" * 128, "😀" * 64]
)
def test_str_edge_cases_rejected(value: str) -> None:
    with pytest.raises(InvalidDataIdError, match="patch"):
        coerce_value("patch", value, str)


def test_str_limit_is_in_bytes() -> None:
    assert coerce_value("patch", "a" * 255, str) == "a" * 255
    assert coerce_value("patch", "é" * 127, str) == "é" * 127


def test_negative_int_cannot_lead_a_component() -> None:
    template = Template("{visit}/x.fits", {"visit": int})
    with pytest.raises(InvalidDataIdError, match="visit"):
        template.render("raw", {"visit": -1})
    assert template.parse("-1/x.fits") is None


def test_huge_int_component_rejected() -> None:
    with pytest.raises(InvalidDataIdError, match="visit"):
        VISIT.render("calexp", {"visit": 10**300, "ccd": 1})


def test_round_trip_rule() -> None:
    assert VISIT.parse("calexp/v0000123/calexp-v0000123-c001.fits") == (
        "calexp",
        {"visit": 123, "ccd": 1},
    )
    assert VISIT.parse("calexp/v123/calexp-v123-c001.fits") is None
    assert VISIT.parse("calexp/v0000123/calexp-v0000123-c1.fits") is None
    assert VISIT.parse("calexp/v0000123/calexp-v0000124-c001.fits") is None
    assert VISIT.parse("calexp/v0000123/bias-v0000123-c001.fits") is None
    assert VISIT.parse("calexp/v0000123/calexp-v0000123-c001.fits/x") is None
    assert VISIT.parse("calexp/v٠٠٠٠١٢٣/calexp-v٠٠٠٠١٢٣-c001.fits") is None


def test_repeated_field_with_different_specs_must_agree() -> None:
    template = Template("v{visit:07d}/{visit}.fits", {"visit": int})
    assert template.parse("v0000012/12.fits") == (None, {"visit": 12})
    assert template.parse("v0000012/13.fits") is None


def test_space_padded_width_round_trips() -> None:
    template = Template("a/{visit:5d}.x", {"visit": int})
    assert template.render("raw", {"visit": -3}) == "a/   -3.x"
    assert template.parse("a/   -3.x") == (None, {"visit": -3})
    assert template.parse("a/-3.x") is None


def test_parse_rejects_hostile_paths() -> None:
    assert TRACT.parse("deep/../t1-p.fits") is None
    assert TRACT.parse("deep/.hidden/t1-p.fits") is None
    assert TRACT.parse("deep/r/t1-\x00.fits") is None
    assert TRACT.parse("9bad/r/t1-p.fits") is None
    assert TRACT.parse("deep/r/t1-\udcff.fits") is None  # an undecodable byte from os.fsdecode
    assert TRACT.parse("deep/r/t01-p.fits") is None
    assert TRACT.parse("deep/r/t-0-p.fits") is None


def test_int_coercion() -> None:
    assert coerce_value("visit", np.int64(12), int) == 12
    assert type(coerce_value("visit", np.int64(12), int)) is int
    assert coerce_value("visit", np.uint8(7), int) == 7
    assert coerce_value("visit", "12", int) == 12
    assert coerce_value("visit", "-3", int) == -3
    for bad in ["12a", 1.5, 2.0, True, np.True_, "", " 12", "1_2", "+3", "١٢", None]:
        with pytest.raises(InvalidDataIdError, match="visit"):
            coerce_value("visit", bad, int)


def test_str_keys_accept_only_str() -> None:
    assert coerce_value("filter", "r", str) == "r"
    with pytest.raises(InvalidDataIdError, match="filter"):
        coerce_value("filter", 3, str)


def test_coerce_data_id() -> None:
    assert list(coerce_data_id({"patch": "p", "tract": "3", "filter": "g"}, TRACT_KEYS)) == [
        "tract",
        "filter",
        "patch",
    ]
    with pytest.raises(InvalidDataIdError, match="tract, filter, patch"):
        coerce_data_id({"tract": 1, "filtre": "g"}, TRACT_KEYS)
    with pytest.raises(InvalidDataIdError, match="filter, patch"):
        coerce_data_id({"tract": 1}, TRACT_KEYS)
    assert coerce_data_id({"tract": 1}, TRACT_KEYS, partial=True) == {"tract": 1}
    assert {"int": int, "str": str} == KEY_TYPES


def test_dataset_type_name() -> None:
    assert validate_dataset_type_name("calexp_2") == "calexp_2"
    for bad in ["", "2x", "a-b", "a/b", "_x", "a b"]:
        with pytest.raises(InvalidDataIdError, match="must match"):
            validate_dataset_type_name(bad)
    with pytest.raises(InvalidDataIdError):
        VISIT.render("../x", {"visit": 1, "ccd": 1})


@pytest.mark.parametrize(
    ("text", "keys", "message"),
    [
        ("{datasetType}/{visit}.fits", VISIT_KEYS, "does not use key ccd"),
        ("{visit}/{ccd}/{band}.fits", VISIT_KEYS, "unknown field"),
        ("{visit:x}/{ccd}", VISIT_KEYS, "format spec"),
        ("{visit:.2f}/{ccd}", VISIT_KEYS, "format spec"),
        ("{filter:d}/t{tract}-{patch}", TRACT_KEYS, "format spec"),
        ("{visit!r}/{ccd}", VISIT_KEYS, "conversion"),
        ("{visit.real}/{ccd}", VISIT_KEYS, "attribute or index"),
        ("{visit[0]}/{ccd}", VISIT_KEYS, "attribute or index"),
        ("{}/{visit}/{ccd}", VISIT_KEYS, "unknown field"),
        ("/{visit}/{ccd}", VISIT_KEYS, "empty component"),
        ("{visit}//{ccd}", VISIT_KEYS, "empty component"),
        ("{visit}/{ccd}/", VISIT_KEYS, "empty component"),
        ("../{visit}/{ccd}", VISIT_KEYS, "'.'"),
        ("./{visit}/{ccd}", VISIT_KEYS, "'.'"),
        ("{visit}/.{ccd}", VISIT_KEYS, "'.'"),
        ("{visit}{ccd}.fits", VISIT_KEYS, "side by side"),
        ("{visit", VISIT_KEYS, "format syntax"),
        ("", VISIT_KEYS, "empty component"),
        ("{visit}/{ccd}", {"visit": int, "ccd": float}, "int or str"),
        ("{datasetType}", {"datasetType": str}, "not datasetType"),
        ("{a-b}", {"a-b": str}, "key names"),
    ],
)
def test_config_errors(text: str, keys: dict[str, type], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Template(text, keys)
    assert repr(text) in str(info.value)


def test_adjacent_fields_across_components_are_fine() -> None:
    template = Template("{visit}/{ccd}", VISIT_KEYS)
    assert template.parse(template.render("raw", {"visit": 1, "ccd": 2})) == (
        None,
        {"visit": 1, "ccd": 2},
    )


def test_attributes_equality_and_repr() -> None:
    assert VISIT.components == (
        "{datasetType}",
        "v{visit:07d}",
        "{datasetType}-v{visit:07d}-c{ccd:03d}.fits",
    )
    assert VISIT.depth == 3
    assert VISIT.uses_dataset_type
    assert VISIT.keys == VISIT_KEYS
    assert VISIT.text == VISIT_TEMPLATE
    assert Template(VISIT_TEMPLATE, dict(VISIT_KEYS)) == VISIT
    assert hash(VISIT) == hash(Template(VISIT_TEMPLATE, dict(VISIT_KEYS)))
    reordered = Template(VISIT_TEMPLATE, {"ccd": int, "visit": int})
    assert reordered == VISIT
    assert hash(VISIT) == hash(reordered)
    assert Template("{datasetType}/v{visit:07d}/c{ccd:03d}.fits", VISIT_KEYS) != VISIT
    assert VISIT != VISIT_TEMPLATE
    assert VISIT_TEMPLATE in repr(VISIT)
    assert not Template("raw/{visit}-{ccd}", VISIT_KEYS).uses_dataset_type


def test_literal_braces() -> None:
    template = Template("{{raw}}/{visit}-{ccd}", VISIT_KEYS)
    assert template.render("raw", {"visit": 1, "ccd": 2}) == "{raw}/1-2"
    assert template.parse("{raw}/1-2") == (None, {"visit": 1, "ccd": 2})


def test_parse_directory() -> None:
    assert VISIT.parse_directory("") == (None, {})
    assert VISIT.parse_directory("calexp") == ("calexp", {})
    assert VISIT.parse_directory("calexp/v0000123") == ("calexp", {"visit": 123})
    assert VISIT.parse_directory("calexp/v123") is None
    assert VISIT.parse_directory("9calexp") is None
    assert VISIT.parse_directory("calexp/v0000123/calexp-v0000123-c001.fits") is None
    assert VISIT.parse_directory("calexp/") is None
    assert TRACT.parse_directory("deep/HSC-G") == ("deep", {"filter": "HSC-G"})
    assert TRACT.parse_directory("deep/..") is None
    assert TRACT.parse_directory("deep/.x") is None
    template = Template("{filter}/{datasetType}/{filter}-{patch}", {"filter": str, "patch": str})
    assert template.parse_directory("g") == (None, {"filter": "g"})
    assert template.parse_directory("g/raw") == ("raw", {"filter": "g"})


def test_render_component() -> None:
    assert VISIT.render_component(0, "calexp", {}) == "calexp"
    assert VISIT.render_component(1, "calexp", {"visit": np.int64(5)}) == "v0000005"
    assert VISIT.render_component(2, "calexp", {"visit": 5, "ccd": 1}) == (
        "calexp-v0000005-c001.fits"
    )
    with pytest.raises(InvalidDataIdError, match="ccd"):
        VISIT.render_component(2, "calexp", {"visit": 5})
    assert TRACT.render_component(1, "deep", {"filter": "HSC-G"}) == "HSC-G"
    with pytest.raises(InvalidDataIdError, match="filter"):
        TRACT.render_component(1, "deep", {"filter": ".."})
    with pytest.raises(InvalidDataIdError, match="tract"):
        Template("{tract}/{filter}-{patch}", TRACT_KEYS).render_component(0, "deep", {"tract": -1})
