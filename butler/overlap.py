"""Can two templates put files at the same path?  A sound answer from their languages.

A template with ``{datasetType}`` filled in (each dataset type renders only its own
name) is, component by component, a regular language: a literal is itself, an ``int``
field is what ``format()`` writes for its spec, a ``str`` field any safe name.  Two
templates *meet* when some path is in both: a file of one would be replaced by the
other's.  They also meet when a path of one is a directory of the other (``x/1`` and
``x/1/c.fits``), which fails the second put.  Whether two regular languages intersect is
decided exactly by walking the product of their automata.

A field repeated in a template is taken as free in each place (the languages are
supersets), so "they cannot meet" is a proof and "they may meet" is conservative.  The
answer comes with an example path.  Components are compared separately (no field holds a
``/``), so a literal component that differs, such as the dataset type's own name in
``{datasetType}/...``, settles the question without building any automaton.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from butler.template import DATASET_TYPE, Template, int_width

# A character class: (True, chars) is exactly chars; (False, chars) every safe character
# but those.  Unsafe characters (NUL, controls, surrogates) are in no template and no value.
CharClass = tuple[bool, frozenset[str]]
# A piece of a component: ("literal", text), ("int", spec) or ("str", "").
Token = tuple[str, str]
Component = tuple[Token, ...]

_DIGITS = frozenset("0123456789")
_NAME_FIRST: CharClass = (False, frozenset("/.-"))  # a str value: no '/', no leading '.' '-'
_NAME_REST: CharClass = (False, frozenset("/"))
_WITNESS_CHARS = "abcxyz0123456789_"  # a readable example character outside any exclusion


@dataclass(frozen=True)
class Shape:
    """One location's template as the paths one dataset type can have there."""

    owner: str  # for messages: "dataset type 'calexp' location 0"
    dataset_type: str | None  # None: not a dataset type (a repository's own file)
    components: tuple[Component, ...]

    @property
    def first_literal(self) -> str | None:
        """The first component if it is a plain name: shapes are bucketed by it."""
        return _literal(self.components[0])


def template_shape(owner: str, dataset_type: str, template: Template) -> Shape:
    """The paths ``template`` can render for ``dataset_type``."""
    components = []
    for parts in template.parts:
        tokens: list[Token] = []
        for literal, field, spec in parts:
            tokens.append(("literal", literal))
            if field == DATASET_TYPE:
                tokens.append(("literal", dataset_type))
            elif field is not None:
                tokens.append(("int", spec) if template.keys[field] is int else ("str", ""))
        components.append(_merged(tokens))
    return Shape(owner, dataset_type, tuple(components))


def path_shape(owner: str, dataset_type: str | None, path: str) -> Shape:
    """One rendered path (or a fixed name) as a shape."""
    return Shape(owner, dataset_type, tuple((("literal", part),) for part in path.split("/")))


def meeting(first: Shape, second: Shape) -> str | None:
    """A sentence saying how the two shapes can meet (with an example), or None if never."""
    depth = min(len(first.components), len(second.components))
    examples = []
    for index in range(depth):
        example = _component_example(first.components[index], second.components[index])
        if example is None:
            return None
        examples.append(example)
    path = "/".join(examples)
    if len(first.components) == len(second.components):
        return f"both can render the path {path!r}"
    shorter, longer = (first, second) if len(first.components) == depth else (second, first)
    return f"{path!r} can be a file of {shorter.owner} and a directory of {longer.owner}"


def first_meeting(shapes: Iterable[Shape]) -> tuple[Shape, Shape, str] | None:
    """The first pair of shapes (of different owners) that can meet, with how.

    Shapes whose first components are different plain names never meet, so each is
    compared only with those sharing its first name and with those whose first component
    holds a field.
    """
    by_first: dict[str | None, list[Shape]] = {}
    everything: list[Shape] = []
    for shape in shapes:
        key = shape.first_literal
        candidates = everything if key is None else by_first.get(key, []) + by_first.get(None, [])
        for other in candidates:
            if other.owner != shape.owner:
                how = meeting(other, shape)
                if how is not None:
                    return other, shape, how
        by_first.setdefault(key, []).append(shape)
        everything.append(shape)
    return None


def _literal(component: Component) -> str | None:
    if all(kind == "literal" for kind, _ in component):
        return "".join(text for _, text in component)
    return None


def _merged(tokens: Sequence[Token]) -> Component:
    merged: list[Token] = []
    for kind, text in tokens:
        if kind == "literal" and not text:
            continue
        if kind == "literal" and merged and merged[-1][0] == "literal":
            merged[-1] = ("literal", merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return tuple(merged)


@functools.lru_cache(maxsize=4096)
def _component_example(first: Component, second: Component) -> str | None:
    """A name both components can render, or None: the product of their automata."""
    a, b = _literal(first), _literal(second)
    if a is not None and b is not None:
        return a if a == b else None
    if not _ends_agree(first, second):
        return None
    return _automaton(first).common_word(_automaton(second))


def _ends_agree(first: Component, second: Component) -> bool:
    """The literals each component starts and ends with must agree as far as both go:
    ``calexp-c{ccd}`` and ``icExp-c{ccd}`` differ at once, without building automata."""
    for index in (0, -1):
        (kind_a, text_a), (kind_b, text_b) = first[index], second[index]
        if kind_a == kind_b == "literal":
            length = min(len(text_a), len(text_b))
            if index == 0 and text_a[:length] != text_b[:length]:
                return False
            if index == -1 and text_a[len(text_a) - length :] != text_b[len(text_b) - length :]:
                return False
    return True


@functools.lru_cache(maxsize=4096)
def _automaton(component: Component) -> _Automaton:
    automaton = _Automaton()
    end = automaton.start
    for kind, text in component:
        if kind == "literal":
            end = automaton.chain(end, [(True, frozenset(ch)) for ch in text])
        elif kind == "str":
            end = automaton.chain(end, [_NAME_FIRST])
            automaton.move(end, _NAME_REST, end)
        else:
            end = automaton.integer(end, text)
    automaton.final = end
    return automaton


class _Automaton:
    """A Thompson NFA: one start and one final state, character and empty moves."""

    def __init__(self) -> None:
        self.moves: list[list[tuple[CharClass, int]]] = []
        self.empty: list[list[int]] = []
        self.start = self.final = self._state()

    def _state(self) -> int:
        self.moves.append([])
        self.empty.append([])
        return len(self.moves) - 1

    def move(self, source: int, chars: CharClass, target: int) -> None:
        self.moves[source].append((chars, target))

    def chain(self, start: int, classes: Sequence[CharClass]) -> int:
        for chars in classes:
            state = self._state()
            self.move(start, chars, state)
            start = state
        return start

    def _digits(self, start: int, minimum: int) -> int:
        """[1-9] then at least ``minimum`` digits: a number without leading zeros."""
        state = self.chain(start, [(True, _DIGITS - {"0"})] + [(True, _DIGITS)] * minimum)
        self.move(state, (True, _DIGITS), state)
        return state

    def integer(self, start: int, spec: str) -> int:
        """Exactly what template._int_pattern matches, as an automaton."""
        end, width = self._state(), int_width(spec)
        if spec[:1] not in ("", "0", "d"):  # padded with spaces to the width
            padding = self._state()
            self.empty[start].append(padding)
            self.move(padding, (True, frozenset(" ")), padding)
            start = padding
        if spec[:1] not in ("", "0", "d") or width < 2:
            self.empty[self.chain(start, [(True, frozenset("0"))])].append(end)
            for sign in ([], [(True, frozenset("-"))]):
                self.empty[self._digits(self.chain(start, sign), 0)].append(end)
            return end
        n = width - 1
        self.empty[self.chain(start, [(True, _DIGITS)] * (n + 1))].append(end)
        self.empty[self._digits(start, n + 1)].append(end)
        minus = self.chain(start, [(True, frozenset("-"))])
        self.empty[self.chain(minus, [(True, _DIGITS)] * n)].append(end)
        self.empty[self._digits(minus, n)].append(end)
        return end

    def common_word(self, other: _Automaton) -> str | None:
        """The shortest word both accept (breadth first over pairs of states), or None."""
        start = (self.start, other.start)
        came_from: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
        queue = deque([start])
        while queue:
            pair = queue.popleft()
            if pair == (self.final, other.final):
                return _word(came_from, pair)
            mine, theirs = pair
            steps: list[tuple[tuple[int, int], str]] = []
            steps += [((target, theirs), "") for target in self.empty[mine]]
            steps += [((mine, target), "") for target in other.empty[theirs]]
            for chars, target in self.moves[mine]:
                for other_chars, other_target in other.moves[theirs]:
                    ch = _common_char(chars, other_chars)
                    if ch is not None:
                        steps.append(((target, other_target), ch))
            for following, ch in steps:
                if following not in came_from:
                    came_from[following] = (pair, ch)
                    queue.append(following)
        return None


def _word(
    came_from: dict[tuple[int, int], tuple[tuple[int, int], str] | None], end: tuple[int, int]
) -> str:
    characters = []
    step = came_from[end]
    while step is not None:
        previous, ch = step
        characters.append(ch)
        step = came_from[previous]
    return "".join(reversed(characters))


def _common_char(first: CharClass, second: CharClass) -> str | None:
    (first_is_set, first_chars), (second_is_set, second_chars) = first, second
    if first_is_set and second_is_set:
        common = first_chars & second_chars
    elif first_is_set:
        common = first_chars - second_chars
    elif second_is_set:
        common = second_chars - first_chars
    else:
        excluded = first_chars | second_chars
        return next(ch for ch in _WITNESS_CHARS if ch not in excluded)
    return min(common) if common else None
