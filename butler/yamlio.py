"""The one module that imports yaml: safe, bounded loading and dumping, C-accelerated if possible.

The safe loader constructs no Python objects, but YAML aliases still make a document's
*expanded* size exponential in its written size: a 1 KB "billion laughs" file loads in
microseconds as a graph of shared lists, and whatever walks it next (a deep copy, a
merge, a hash, ``str()``) takes hours and all memory.  So every load composes the node
graph first, measures it once (linear time: each node is visited once), and refuses a
document whose aliases expand it past a bound, refer to themselves, or nest too deep,
before anything is constructed.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import yaml

try:
    _Loader: type = yaml.CSafeLoader
    _Dumper: type = yaml.CSafeDumper
except AttributeError:  # libyaml missing: the pure-Python classes behave the same, slower
    _Loader = yaml.SafeLoader
    _Dumper = yaml.SafeDumper

YAMLError = yaml.YAMLError

#: Aliases may expand a document to at most this many times its written nodes, or to
#: MIN_EXPANDED_NODES, whichever is larger.  Honest files use few aliases (shared
#: sub-structures written once); a bomb multiplies by 9 or 10 per level.
EXPANSION_FACTOR = 10
MIN_EXPANDED_NODES = 100_000
#: libyaml stops at 1000 levels; code that walks the result recurses (deepcopy, merge), so
#: a caller may ask for less.  The pure-Python parser recurses while composing: its
#: RecursionError becomes a YAMLLimitError too.
DEFAULT_MAX_DEPTH = 1000
_READ_SIZE = 2**16


class YAMLLimitError(yaml.YAMLError):
    """A document over a bound: aliases expanding too far or to themselves, too deep, too big."""


class YAMLValueError(yaml.YAMLError):
    """A scalar the loader cannot turn into a value (an int too long, a date that is none)."""


class _SilentDumper(_Dumper):  # type: ignore[misc]
    """Never writes anchors and aliases: what we write must read back under the bounds."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def loads(text: str | bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> object:
    """Parse YAML text with the safe loader, refusing alias bombs and over-deep nesting.

    Raises ``YAMLError`` (``YAMLLimitError`` for a bound) for anything that is not one
    acceptable document.
    """
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YAMLLimitError(
                f"the document nests deeper than this parser can follow (limit {max_depth})"
            ) from None
        if node is None:
            return None
        _check_graph(node, max_depth)
        try:
            return loader.construct_document(node)
        except (ValueError, OverflowError, TypeError) as exc:  # an int of 5000 digits,
            # a date of month 13: the constructors call int() and datetime() unguarded
            reason = str(exc).split(";")[0]  # not the advice to raise Python's digit limit
            raise YAMLValueError(f"a value cannot be read: {reason}") from None
    finally:
        loader.dispose()


def one_line(error: BaseException) -> str:
    """A parser's message (several lines with a caret) as one line for an error message."""
    return " ".join(str(error).split())


def dumps(data: object) -> str:
    """Serialize plain data (dict, list, str, int, float, bool, None) as block YAML."""
    return str(yaml.dump(data, Dumper=_SilentDumper, sort_keys=False, default_flow_style=False))


def load_file(
    path: str | Path, *, max_bytes: int | None = None, max_depth: int = DEFAULT_MAX_DEPTH
) -> object:
    """Read and parse a file; with ``max_bytes``, a longer file is refused unread.

    OSError if it cannot be read; YAMLLimitError if it is too big.
    """
    with open(path, "rb") as stream:
        return load_stream(stream, max_bytes=max_bytes, max_depth=max_depth)


def load_stream(
    stream: BinaryIO, *, max_bytes: int | None = None, max_depth: int = DEFAULT_MAX_DEPTH
) -> object:
    """``load_file`` for an open binary stream."""
    if max_bytes is None:
        text = stream.read()
    else:  # in pieces: read(n) would allocate n bytes even for a tiny file
        pieces: list[bytes] = []
        size = 0
        while piece := stream.read(_READ_SIZE):
            size += len(piece)
            if size > max_bytes:  # a device or an endless file stops here too
                raise YAMLLimitError(
                    f"the file is larger than {max_bytes} bytes; a configuration file "
                    "is never that big"
                )
            pieces.append(piece)
        text = b"".join(pieces)
    return loads(text, max_depth=max_depth)


def _check_graph(root: yaml.Node, max_depth: int) -> None:
    """Measure the expanded document without expanding it: one visit per distinct node.

    ``size[n]`` is the number of nodes ``n`` expands to and ``depth[n]`` its nesting; an
    alias is the same node object reached twice, so both are memoised by identity.  A node
    reached again while still open is an alias to its own ancestor: a recursive document.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    # The bound on expansion, from what is written; known once every node was seen, so
    # a first pass counts them (a bomb is a few dozen nodes: it stops at the first).
    limit = max(MIN_EXPANDED_NODES, EXPANSION_FACTOR * _count(root))
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            open_nodes.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in children)
            depth[key] = 1 + max((depth[id(child)] for child in children), default=0)
            if depth[key] > max_depth:
                raise YAMLLimitError(
                    f"the document nests more than {max_depth} levels deep (line "
                    f"{node.start_mark.line + 1}); flatten it"
                )
            if size[key] > limit:  # children first: the innermost node over the bound
                raise YAMLLimitError(
                    f"aliases expand the value at line {node.start_mark.line + 1} to "
                    f"{size[key]} nodes (limit {limit}); write the repeated parts out "
                    "instead of using anchors and aliases (&, *)"
                )
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise YAMLLimitError(
                f"an alias refers to a node that contains it (line {node.start_mark.line + 1}); "
                "a recursive document cannot be read"
            )
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in size)


def _count(root: yaml.Node) -> int:
    """The distinct nodes of the graph: what the file actually holds."""
    seen = {id(root)}
    stack = [root]
    while stack:
        for child in _children(stack.pop()):
            if id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    return len(seen)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []
