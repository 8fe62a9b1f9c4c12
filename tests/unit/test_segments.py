"""SMS segments, counted the way carriers count them: every boundary, then
properties over random bodies."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.messaging.segments import (
    GSM_7_BASIC,
    GSM_7_EXTENSION,
    Encoding,
    Measure,
    measure,
)

GSM, UCS = Encoding.GSM_7, Encoding.UCS_2

# Written out again here, from the GSM 03.38 table, so the module's table is
# checked against an independent copy rather than against itself.
BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EXTENSION = "^{}\\[~]|€\f"
# \u0391 is Greek capital alpha, which only looks like `A`.
NOT_GSM = "çÀâêîôûëïÿœ`\t\u0391\u2126😀🎉中文ąłżÂ"
EMOJI = "😀"


# -- the alphabet ---------------------------------------------------------------


def test_the_basic_alphabet_is_the_127_characters_of_gsm_03_38() -> None:
    assert len(BASIC) == 127
    assert frozenset(BASIC) == GSM_7_BASIC


def test_the_extension_table_holds_the_ten_escaped_characters() -> None:
    assert frozenset(EXTENSION) == GSM_7_EXTENSION
    assert not GSM_7_BASIC & GSM_7_EXTENSION


@pytest.mark.parametrize("ch", list(NOT_GSM))
def test_a_character_outside_both_tables_makes_the_body_ucs_2(ch: str) -> None:
    assert measure(f"Hello {ch}").encoding is UCS


def test_lowercase_c_cedilla_is_not_gsm_though_the_capital_is() -> None:
    assert measure("ç").encoding is UCS
    assert measure("Ç").encoding is GSM


def test_greek_look_alikes_count_only_as_the_greek_letters() -> None:
    assert measure("ΔΩ").encoding is GSM
    assert measure("\u2206").encoding is UCS  # increment sign
    assert measure("\u2126").encoding is UCS  # ohm sign


def test_line_feed_and_carriage_return_are_one_septet_and_form_feed_two() -> None:
    assert measure("\n\r") == Measure(GSM, units=2, segments=1)
    assert measure("\f") == Measure(GSM, units=2, segments=1)


def test_an_empty_body_is_no_segment() -> None:
    assert measure("") == Measure(GSM, units=0, segments=0)


# -- one segment or two ---------------------------------------------------------


def test_160_gsm_characters_fit_one_segment() -> None:
    assert measure("a" * 160) == Measure(GSM, units=160, segments=1)


def test_161_gsm_characters_take_two_segments() -> None:
    assert measure("a" * 161) == Measure(GSM, units=161, segments=2)


def test_80_euro_signs_are_160_septets_in_one_segment() -> None:
    assert measure("€" * 80) == Measure(GSM, units=160, segments=1)


def test_81_euro_signs_are_162_septets_in_two_segments() -> None:
    assert measure("€" * 81) == Measure(GSM, units=162, segments=2)


def test_70_ucs_2_characters_fit_one_segment() -> None:
    assert measure("ç" * 70) == Measure(UCS, units=70, segments=1)


def test_71_ucs_2_characters_take_two_segments() -> None:
    assert measure("ç" * 71) == Measure(UCS, units=71, segments=2)


def test_a_single_emoji_makes_a_long_gsm_body_ucs_2() -> None:
    assert measure("a" * 68) == Measure(GSM, units=68, segments=1)
    assert measure("a" * 68 + EMOJI) == Measure(UCS, units=70, segments=1)
    assert measure("a" * 69 + EMOJI) == Measure(UCS, units=71, segments=2)


def test_an_emoji_costs_two_utf_16_units() -> None:
    assert measure(EMOJI) == Measure(UCS, units=2, segments=1)
    assert measure(EMOJI * 35) == Measure(UCS, units=70, segments=1)
    assert measure(EMOJI * 36) == Measure(UCS, units=72, segments=2)


# -- multi-part messages --------------------------------------------------------


def test_306_gsm_characters_fill_exactly_two_parts() -> None:
    assert measure("a" * 306) == Measure(GSM, units=306, segments=2)


def test_307_gsm_characters_take_three_parts() -> None:
    assert measure("a" * 307) == Measure(GSM, units=307, segments=3)


def test_134_ucs_2_characters_fill_exactly_two_parts() -> None:
    assert measure("ç" * 134) == Measure(UCS, units=134, segments=2)


def test_135_ucs_2_characters_take_three_parts() -> None:
    assert measure("ç" * 135) == Measure(UCS, units=135, segments=3)


def test_an_extension_character_ending_exactly_on_a_part_boundary_fits() -> None:
    assert measure("a" * 151 + "€" + "a" * 153) == Measure(GSM, units=306, segments=2)


def test_an_extension_character_straddling_a_part_boundary_moves_to_the_next_part() -> None:
    # Part one ends a septet short (152), so 306 septets need three parts.
    assert measure("a" * 152 + "€" + "a" * 152) == Measure(GSM, units=306, segments=3)


def test_an_emoji_ending_exactly_on_a_part_boundary_fits() -> None:
    assert measure("ç" * 65 + EMOJI + "ç" * 67) == Measure(UCS, units=134, segments=2)


def test_an_emoji_straddling_a_part_boundary_moves_to_the_next_part() -> None:
    # Part one ends a unit short (66), so 134 units need three parts.
    assert measure("ç" * 66 + EMOJI + "ç" * 66) == Measure(UCS, units=134, segments=3)


def test_twilios_1600_character_limit_is_eleven_gsm_parts() -> None:
    assert measure("a" * 1600).segments == 11
    assert measure("a" * 1530).segments == 10


def test_a_segment_holds_less_once_the_message_is_split() -> None:
    assert measure("a" * 160).per_segment == 160
    assert measure("a" * 161).per_segment == 153
    assert measure("ç" * 70).per_segment == 70
    assert measure("ç" * 71).per_segment == 67


# -- properties -----------------------------------------------------------------

gsm_text = st.text(alphabet=st.sampled_from(BASIC + EXTENSION), max_size=500)
# Any character a UTF-8 body can carry (so no lone surrogates).
any_char = st.sampled_from(BASIC + EXTENSION + NOT_GSM) | st.characters(codec="utf-8")
mixed_text = st.text(alphabet=any_char, max_size=400)


@given(gsm_text)
def test_text_drawn_from_the_gsm_tables_is_always_gsm_7(body: str) -> None:
    found = measure(body)
    assert found.encoding is GSM
    assert found.units == len(body) + sum(ch in EXTENSION for ch in body)


@given(mixed_text, any_char)
def test_appending_a_character_never_lowers_the_segment_count(body: str, ch: str) -> None:
    assert measure(body + ch).segments >= measure(body).segments


@given(mixed_text)
def test_packing_loses_at_most_one_unit_a_part(body: str) -> None:
    found = measure(body)
    if found.segments <= 1:
        assert found.units <= found.per_segment
    else:
        part = found.per_segment
        assert math.ceil(found.units / part) <= found.segments
        assert found.segments <= math.ceil(found.units / (part - 1))


@given(st.text(alphabet=st.sampled_from("abcç"), min_size=1, max_size=600))
def test_without_pairs_the_parts_are_the_length_divided_by_the_part_size(body: str) -> None:
    found = measure(body)
    single, part = (160, 153) if found.encoding is GSM else (70, 67)
    assert found.segments == (1 if len(body) <= single else math.ceil(len(body) / part))
