"""The aggregator as paths: what the mount shows, answered by the resolver.

    ""                          the union view: every dataset at its view path
    .repos/<label>/<path>       one repository alone, every file it holds (an output's
                                takes writes, by its own templates, for it alone)
    .versions/<view path>/v<N><ext>   every version of a dataset, removed ones too
    .butler/                    the mount's own files (status, log): not the library's

A path is parsed once, by :func:`locate`, into a :class:`Place` (its namespace and
the parts that namespace needs); every method here and the mount match on that.

A dataset's *view path* is its type's template in the effective policy (the
first repository in search order defining the type, under the aggregator's
overrides) rendered with its data ID.  Path to dataset is a template parse
plus one registry lookup per repository; a directory listing is one indexed
query per repository for that directory's own entries, never a scan.
``.butler/status`` is the mount's own business; :meth:`View.status` feeds it.

Versions never change, so a version's file is opened by :meth:`View.open_version`,
which returns a descriptor on exactly that version's bytes whatever is put meanwhile.
"""

from __future__ import annotations

import difflib
import enum
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from butler import formats
from butler.butler import Butler
from butler.errors import (
    ButlerError,
    DatasetNotFoundError,
    InvalidDataIdError,
    NoOutputError,
    ReadOnlyError,
)
from butler.policy import DatasetTypeDef
from butler.registry import Notices, Row, canonical_data_id
from butler.resolver import DatasetRef, Member, Resolver
from butler.template import DataId, Template

REPOS = ".repos"
VERSIONS = ".versions"
INTERNAL = ".butler"
#: The namespaces besides the union view, reached by name from the root (the mount lists
#: them there only with ``-o showmeta``: SPEC §8).
META = (REPOS, VERSIONS, INTERNAL)

#: How a version's file is opened: read-only, never following a symbolic link.
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW

#: Lasting names of versions kept (a path each): the files a mount reads again and again.


class Area(enum.Enum):
    """The namespaces of the mounted tree."""

    UNION = "union"
    REPOS = REPOS
    VERSIONS = VERSIONS
    INTERNAL = INTERNAL


@dataclass(frozen=True)
class Place:
    """A path of the tree, parsed once: its namespace and the parts that namespace needs.

    ``path`` is the whole path (relative, no leading slash; "" is the root).
    ``label`` is the repository of a ``.repos/<label>/...`` path ("" for ``.repos``
    itself and in the other namespaces).  ``relative`` is the path inside the
    namespace: the union path itself, the path inside the repository, the union path
    (and version name) below ``.versions/``, or the name below ``.butler/``.
    """

    area: Area
    path: str
    label: str = ""
    relative: str = ""

    @property
    def is_namespace_root(self) -> bool:
        """``.repos``, ``.repos/<label>``, ``.versions`` or ``.butler`` itself."""
        return self.area is not Area.UNION and not self.relative


def locate(path: str) -> Place:
    """The :class:`Place` of a tree path (relative, no leading slash)."""
    head, _, rest = path.partition("/")
    if head == REPOS:
        label, _, relative = rest.partition("/")
        return Place(Area.REPOS, path, label, relative)
    if head == VERSIONS:
        return Place(Area.VERSIONS, path, relative=rest)
    if head == INTERNAL:
        return Place(Area.INTERNAL, path, relative=rest)
    return Place(Area.UNION, path, relative=path)


class Node:
    """A path in the tree: a dataset file (``ref`` set) or a directory.

    A listing makes thousands of nodes, and the mount shows most of them with only their
    size and commit time: a node made from a registry row makes its :class:`DatasetRef`
    when ``ref`` is first read (a JSON parse and a dozen fields, most of a listing's cost).
    """

    __slots__ = ("_member", "_ref", "_resolver", "_row", "path")

    def __init__(self, path: str, ref: DatasetRef | None = None) -> None:
        self.path = path
        self._ref = ref
        self._row: Row | None = None
        self._resolver: Resolver | None = None
        self._member: Member | None = None

    @classmethod
    def of_row(cls, path: str, resolver: Resolver, member: Member, row: Row) -> Node:
        node = cls(path)
        node._row = row
        node._resolver = resolver
        node._member = member
        return node

    @property
    def ref(self) -> DatasetRef | None:
        row, resolver, member = self._row, self._resolver, self._member
        if row is not None and resolver is not None and member is not None:
            self._ref = resolver.ref(member, row)
            # The row is no longer needed (a race with another thread only repeats this).
            self._row = self._resolver = self._member = None
        return self._ref

    @property
    def is_directory(self) -> bool:
        return self._ref is None and self._row is None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def dataset_type(self) -> str | None:
        row = self._row
        if row is not None:
            return row.dataset_type
        return None if self._ref is None else self._ref.dataset_type

    @property
    def txid(self) -> str | None:
        """The transaction that committed this version (None for a directory): with the
        path, what names one version's file for good (the mount's inode numbers)."""
        row = self._row
        if row is not None:
            return row.txid
        return None if self._ref is None else self._ref.txid

    @property
    def size(self) -> int:
        row = self._row
        if row is not None:
            return row.size
        return 0 if self._ref is None else self._ref.size

    @property
    def committed(self) -> float:
        """Commit time (seconds since the epoch); 0 for a directory."""
        row = self._row
        if row is not None:
            return row.committed
        return 0.0 if self._ref is None else self._ref.committed

    def __repr__(self) -> str:
        kind = "directory" if self.is_directory else "file"
        return f"Node({self.path!r}, {kind})"


@dataclass(frozen=True)
class WriteTarget:
    """What writing a new file at a path would put."""

    dataset_type: str
    data_id: DataId
    define_genre: str | None  # set when the path names a dataset type to define first
    #: The outputs to put to (``Butler.ingest(outputs=...)``): the one a ``.repos/<label>/``
    #: path names; None for a union path (every accepting output).
    outputs: tuple[str, ...] | None = None
    #: The storage format the written bytes are read as (by the path's extension, else
    #: the type's): what their first bytes must look like.
    content_format: str | None = None


@dataclass(frozen=True)
class _TemplateEntry:
    template: Template
    types: tuple[str, ...]


#: How :meth:`View.open_version` opens a name: an fd; FileNotFoundError if nothing is
#: there; None if it cannot tell without waiting (the mount's non-blocking opens).
class View:
    def __init__(self, butler: Butler) -> None:
        self.butler = butler
        self.resolver = butler.resolver
        #: Advances at every refresh: answers a caller cached are stale once it has moved.
        self.revision = 0
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the template index (after the policy changed)."""
        # Built aside and swapped in whole: other threads keep answering meanwhile.
        types = self.resolver.policy.dataset_types
        grouped: dict[Template, list[str]] = {}
        for name, definition in types.items():
            grouped.setdefault(definition.primary.template, []).append(name)
        by_depth: dict[int, list[_TemplateEntry]] = {}
        for template, names in grouped.items():
            by_depth.setdefault(template.depth, []).append(_TemplateEntry(template, tuple(names)))
        self._by_depth = by_depth
        self._view_template = {name: d.primary.template.text for name, d in types.items()}
        self._stored: dict[tuple[str, str, int], str | None] = {}
        self.revision += 1  # last: what was listed with the old index has the old number

    @property
    def _members(self) -> list[Member]:
        """Every repository that exists: search order, then write-only outputs (an output
        not created yet shows nothing until its first write)."""
        resolver = self.resolver
        extra = [m for m in resolver.outputs if m not in resolver.search and m.exists]
        return resolver.search + extra

    locate = staticmethod(locate)

    # -- the aggregator, as the mount needs it ---------------------------------

    @property
    def outputs(self) -> list[str]:
        """Labels of the output repositories, in the order given."""
        return [m.label for m in self.resolver.outputs]

    def is_output(self, label: str) -> bool:
        return any(m.label == label for m in self.resolver.outputs)

    def accepts(self, dataset_type: str) -> bool:
        """Does some output accept ``dataset_type``?"""
        return any(m.accepts(dataset_type) for m in self.resolver.outputs)

    def repository_paths(self) -> list[tuple[str, Path]]:
        """(label, path) of every repository, outputs not created yet included."""
        resolver = self.resolver
        members = resolver.search + [m for m in resolver.outputs if m not in resolver.search]
        return [(m.label, m.path) for m in members]

    def write_area(self) -> Path | None:
        """The first output's directory (where the mount keeps its drafts), made now if it
        does not exist yet (a read-write mount writes there); None without outputs."""
        outputs = self.resolver.outputs
        if not outputs:
            return None
        return self.resolver.ensure_output(outputs[0]).path

    def space_path(self) -> Path:
        """Whose filesystem ``statfs`` reports: the first output's, else the first input's."""
        members = self.resolver.outputs or self.resolver.search
        path = members[0].path
        return path if path.exists() else path.parent

    # -- questions about paths ------------------------------------------------

    def stat(self, path: str) -> Node:
        """The node at ``path`` (relative, no leading slash); DatasetNotFoundError if none."""
        place = locate(path)
        if place.area is Area.REPOS:
            return self._repo_stat(place)
        if place.area is Area.VERSIONS:
            return self._versions_stat(place)
        if place.area is Area.INTERNAL:
            if place.relative:
                raise _missing(path)  # the mount's own files
            return Node(path)
        if path == "":
            return Node(path)
        parsed = self.parse(path)
        if parsed is not None:
            try:
                member, row = self.resolver.find(*parsed)
            except (LookupError, ValueError):
                pass
            else:
                return Node.of_row(path, self.resolver, member, row)
        if any(m.repo.registry.is_directory(path) for m in self.resolver.search):
            return Node(path)
        raise _missing(path)

    def listdir(self, path: str) -> list[Node]:
        """The children of the directory ``path``, sorted by name.

        The root lists the union view only: ``.repos``, ``.versions`` and ``.butler``
        are reached by name (:data:`META`).
        """
        place = locate(path)
        if place.area is Area.REPOS:
            return self._repo_listdir(place)
        if place.area is Area.VERSIONS:
            return self._versions_listdir(place)
        if place.area is Area.INTERNAL:
            if place.relative:
                raise _missing(path)
            return []
        nodes = self._union_window(path, include_removed=False)[0]
        if not nodes and not self.stat(path).is_directory:
            raise _missing(path)
        return nodes

    def listdir_from(
        self, path: str, start: str, limit: int
    ) -> tuple[list[Node], str | None] | None:
        """A window of ``listdir(path)``: the children named ``start`` or after, by name.

        Returns ``(nodes, last)``: every child whose name lies from ``start`` to ``last``
        (``None``: to the end), so a name in that range that is not among them is not in
        the listing either.  At most ``limit`` names are read per repository, through the
        registry's (directory, name) index.  The mount uses it when many names of one
        directory are looked up one by one (``stat`` of every file without a listing):
        one range query instead of one query per name.  ``None`` for directories it does
        not serve this way (the root, ``.versions``, ``.butler``).
        """
        place = locate(path)
        if path == "" or place.area in (Area.VERSIONS, Area.INTERNAL):
            return None
        if place.area is Area.REPOS:
            if not place.label:
                return None
            member = self._member(place.label, path)
            subdirs, rows = member.repo.registry.list_directory(
                place.relative, primary_only=False, start=start, limit=limit
            )
            last = _window_end(None, subdirs, limit)
            last = _window_end(last, [posixpath.basename(row.path) for row in rows], limit)
            named = {name: Node(posixpath.join(path, name)) for name in subdirs}
            for row in rows:
                name = posixpath.basename(row.path)
                if name not in named:
                    child = posixpath.join(path, name)
                    named[name] = Node.of_row(child, self.resolver, member, row)
            return _within([named[name] for name in sorted(named)], last), last
        nodes, last = self._union_window(path, include_removed=False, start=start, limit=limit)
        return _within(nodes, last), last

    def parse(self, path: str) -> tuple[str, DataId] | None:
        """(dataset type, data ID) of a union path, by the view templates; None if no match."""
        depth = path.count("/") + 1
        for entry in self._by_depth.get(depth, ()):
            parsed = entry.template.parse(path)
            if parsed is None:
                continue
            dataset_type, data_id = parsed
            if dataset_type is None:
                return entry.types[0], data_id
            if dataset_type in entry.types:
                return dataset_type, data_id
        return None

    def classify_write(self, path: str) -> WriteTarget:
        """What a new file at ``path`` would be; raises with the reason if it cannot be one.

        A union path is put to every accepting output; a ``.repos/<label>/<path>`` one
        to that output alone (see :meth:`classify_repo_write`).  NoOutputError (EROFS):
        only inputs could hold it.  InvalidDataIdError (EACCES): the path matches no
        template, or fails the round-trip rule.  A path naming a new dataset type by a
        genre's template has ``define_genre`` set: defining it is the caller's decision
        (the mount's ``-o autodefine``; else :meth:`undefined_type_error`).
        """
        place = locate(path)
        if place.area is Area.REPOS:
            return self.classify_repo_write(place.label, place.relative)
        parsed = self.parse(path)
        if parsed is not None:
            dataset_type, data_id = parsed
            if not self.accepts(dataset_type):
                raise NoOutputError(
                    f"{path}: no output accepts {dataset_type}, only read-only inputs hold it; "
                    "add an output for it to the aggregator"
                )
            storage = self.resolver.definition(dataset_type).primary.storage
            return WriteTarget(dataset_type, data_id, None, None, _content_format(path, storage))
        name, dataset_type, data_id = self._new_type(path, path)
        if not self.accepts(dataset_type):
            raise NoOutputError(
                f"{path}: would define dataset type {dataset_type}, but no output accepts "
                "it; add an output for it to the aggregator"
            )
        storage = self.resolver.policy.genre(name).storage
        return WriteTarget(dataset_type, data_id, name, None, _content_format(path, storage))

    def classify_repo_write(self, label: str, relative: str) -> WriteTarget:
        """What a new file at ``.repos/<label>/<relative>`` would be: a put to that output.

        The path is read by the output's own templates (the locations it stores each type
        at, under its ``storage:`` routing: where the put will write it), or names a new
        dataset type by a genre's template.  ReadOnlyError (EROFS): ``label`` is an input.
        NoOutputError (EROFS): the output does not accept the dataset type.
        InvalidDataIdError (EACCES): no template of it matches.
        """
        path = posixpath.join(REPOS, label, relative)
        member = self._output(label, path)
        if not relative:
            raise InvalidDataIdError(f"{path}: a dataset goes below .repos/{label}/")
        parsed = self._repo_parse(member, relative)
        if parsed is not None:
            dataset_type, data_id, storage = parsed
            if not member.accepts(dataset_type):
                raise NoOutputError(
                    f"{path}: output {label} does not accept {dataset_type} (its datasetTypes: "
                    f"{sorted(member.dataset_types or ())}); write it under another output's "
                    ".repos/ directory"
                )
            content = _content_format(relative, storage)
            return WriteTarget(dataset_type, data_id, None, (label,), content)
        name, dataset_type, data_id = self._new_type(relative, path)
        if not member.accepts(dataset_type):
            raise NoOutputError(
                f"{path}: would define dataset type {dataset_type}, but output {label} does "
                "not accept it"
            )
        storage = self.resolver.policy.genre(name).storage
        return WriteTarget(dataset_type, data_id, name, (label,), _content_format(path, storage))

    def undefined_type_error(self, path: str, target: WriteTarget) -> InvalidDataIdError:
        """The refusal of a path naming a dataset type nobody defined (no autodefine):
        the near miss, if any, and how to define it."""
        assert target.define_genre is not None
        name = target.dataset_type
        near = difflib.get_close_matches(name, list(self.resolver.policy.dataset_types), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        labels = target.outputs or tuple(m.label for m in self.resolver.outputs if m.accepts(name))
        where = next((m.repo.path for m in self.resolver.outputs if m.label in labels), None)
        return InvalidDataIdError(
            f"{path}: {name} is not a defined dataset type{hint}; to write a new dataset "
            f"type, define it first: butler define {where or 'OUTPUT'} {name} "
            f"--genre {target.define_genre} (the mount sees it within a second)"
        )

    def _new_type(self, relative: str, path: str) -> tuple[str, str, DataId]:
        """(genre, dataset type, data ID) of a new dataset type named by ``relative``."""
        genres = []
        for name, genre in self.resolver.policy.genres.items():
            template = Template(genre.template, genre.keys)
            parsed_genre = template.parse(relative) if template.uses_dataset_type else None
            if parsed_genre is not None and parsed_genre[0] is not None:
                genres.append((name, parsed_genre[0], parsed_genre[1]))
        if len(genres) == 1:
            dataset_type = genres[0][1]
            if dataset_type in self.resolver.policy.dataset_types:
                # Not a new type: the path is not where this view (or repository) keeps it.
                raise InvalidDataIdError(
                    f"{path}: {dataset_type} is a defined dataset type, and this is not its "
                    "path here; see its template in .butler/status (under .repos/<label>/, "
                    "that repository's own butler.yaml)"
                )
            return genres[0]
        if len(genres) > 1:
            raise InvalidDataIdError(
                f"{path}: the new dataset type matches the templates of genres "
                f"{[g[0] for g in genres]}; define it first with 'butler define'"
            )
        raise InvalidDataIdError(
            f"{path}: matches no dataset type's template (or is not in its canonical form, "
            "e.g. v0000123 rather than v123); see the templates with 'butler types' or in "
            ".butler/status"
        )

    def _output(self, label: str, path: str) -> Member:
        """The output labelled ``label``; ReadOnlyError if it is an input."""
        member = self._member(label, path)
        if not member.is_output:
            outputs = [m.label for m in self.resolver.outputs]
            raise ReadOnlyError(
                f"{path}: {label} is an input, and inputs are never changed; write under "
                f"the .repos/ directory of an output ({', '.join(outputs) or 'none'}) or at "
                "the dataset's path in the top-level view"
            )
        return member

    def _repo_definitions(self, member: Member) -> list[DatasetTypeDef]:
        """How ``member`` stores each dataset type (``Resolver.stored_definition``), its
        own first."""
        names = dict.fromkeys(
            [
                *(member.own_policy.dataset_types if member.own_policy is not None else ()),
                *self.resolver.policy.dataset_types,
            ]
        )
        return [self.resolver.stored_definition(member, name)[0] for name in names]

    def _repo_parse(self, member: Member, relative: str) -> tuple[str, DataId, str] | None:
        """(dataset type, data ID, storage) of a path in ``member`` by the locations a put
        writes; a type the member accepts wins over one it does not."""
        refused = None
        for definition in self._repo_definitions(member):
            for location in definition.locations:
                if not location.writable:
                    continue
                parsed = location.template.parse(relative)
                if parsed is None or parsed[0] not in (None, definition.name):
                    continue
                if member.accepts(definition.name):
                    return definition.name, parsed[1], location.storage
                refused = refused or (definition.name, parsed[1], location.storage)
        return refused

    def is_template_directory(self, path: str) -> bool:
        """True if ``path`` could be a directory of some template (``mkdir -p``).

        Under ``.repos/<label>/``, of that repository's own templates (or a genre's).
        """
        place = locate(path)
        if place.area is Area.REPOS:
            member = next((m for m in self._members if m.label == place.label), None)
            if member is None or not place.relative:
                return False
            directory = place.relative
            templates = [
                location.template
                for definition in self._repo_definitions(member)
                for location in definition.locations
                if location.writable
            ]
        elif place.area is Area.UNION:
            directory = path
            templates = [d.primary.template for d in self.resolver.policy.dataset_types.values()]
        else:
            return False
        depth = directory.count("/") + 1
        templates += [Template(g.template, g.keys) for g in self.resolver.policy.genres.values()]
        for template in templates:
            if depth < template.depth and template.parse_directory(directory) is not None:
                return True
        return False

    # -- versions ----------------------------------------------------------------

    def version_nodes(self, path: str) -> list[Node]:
        """Every version the file at ``path`` has shown, in any repository that held it
        (removed ones too): what an inode number the mount handed out may still name."""
        place = locate(path)
        if place.area is Area.VERSIONS:
            try:
                return [self.stat(path)]
            except DatasetNotFoundError:
                return []
        if place.area is Area.REPOS:
            member = next((m for m in self._members if m.label == place.label), None)
            parsed = None if member is None else self._repo_parse(member, place.relative)
            if member is None or parsed is None:
                return []
            members, wanted = [member], place.relative
            dataset_type, data_id = parsed[0], parsed[1]
        elif place.area is Area.UNION:
            found = self.parse(path)
            if found is None:
                return []
            members, wanted = self._members, None
            dataset_type, data_id = found
        else:
            return []
        key = canonical_data_id(data_id)
        nodes = []
        for member in members:
            for row in member.repo.registry.versions(dataset_type, key):
                if wanted is None or row.path == wanted:
                    nodes.append(Node.of_row(path, self.resolver, member, row))
        return nodes

    def open_version(self, ref: DatasetRef, cached: bool = False) -> int | None:
        """A descriptor on exactly version ``ref``'s bytes, whatever is put meanwhile: its
        own name in its repository, opened without following any link.  With ``cached``,
        None if that would wait for the disk (the caller opens it in a worker thread)."""
        # (Looked up each time: an output created since the view was built is there too.)
        member = next((m for m in self._members if m.label == ref.repository), None)
        if member is None:
            raise _missing(ref.relative_path)
        current = ref.path == str(member.path / ref.relative_path)  # shown at its template path
        return member.repo.open_version(
            ref.version, ref.relative_path, cached=cached, current=current
        )

    # -- change tracking ----------------------------------------------------

    def token(self) -> tuple[int, ...]:
        """Cheap: one indexed MAX() per repository.  Compare with an earlier token."""
        return tuple(m.repo.registry.change_seq() for m in self._members)

    def notices(self) -> list[Notices] | None:
        """A listening connection per repository when every one pushes its changes
        (PostgreSQL), else None: compare :meth:`token` instead.  The caller closes them;
        :meth:`member_paths` tells when they no longer cover the view."""
        found: list[Notices] = []
        try:
            for member in self._members:
                notices = member.repo.registry.notices()
                if notices is None:
                    break
                found.append(notices)
            else:
                return found
        except BaseException:
            for notices in found:
                notices.close()
            raise
        for notices in found:
            notices.close()
        return None

    def member_paths(self) -> tuple[str, ...]:
        """The repositories :meth:`token` and :meth:`notices` cover (asks no registry)."""
        return tuple(str(m.repo.path) for m in self._members)

    def changes_since(self, token: tuple[int, ...]) -> tuple[tuple[int, ...], list[str]]:
        """(new token, paths whose entries changed) — union, .repos and .versions paths."""
        if self._reload_policies():
            token = tuple(0 for _ in self._members)
        new = self.token()
        paths: list[str] = []
        for member, old, now in zip(self._members, token, new, strict=False):
            if old == now:
                continue
            for relative in member.repo.registry.changes_since(old):
                paths.append(posixpath.join(REPOS, member.label, relative))
                paths.extend((relative, posixpath.join(VERSIONS, relative)))
        return new, paths

    def _reload_policies(self) -> bool:
        changed = False
        for member in self._members:
            changed |= member.repo.reload_config_if_changed()
        if changed:
            self.resolver.refresh_policy()
            self.refresh()
        return changed

    def status(self) -> dict[str, object]:
        members = []
        for member in self._members:
            members.append(
                {
                    "label": member.label,
                    "path": str(member.repo.path),
                    "mode": member.mode,
                    "datasets": member.repo.registry.count(),
                    "datasetTypes": sorted(member.dataset_types)
                    if member.dataset_types is not None
                    else "all",
                }
            )
        templates = {name: text for name, text in sorted(self._view_template.items())}
        return {"repositories": members, "templates": templates}

    # -- the three namespaces -----------------------------------------------

    def _union_window(
        self,
        directory: str,
        *,
        include_removed: bool,
        start: str = "",
        limit: int = -1,
    ) -> tuple[list[Node], str | None]:
        """The union listing from ``start`` (all of it by default), and where it is complete
        (``None``: to the end).  The resolver decides which repository's file shows (the
        first in search order); a file stored under another template than the view's is
        not at this view path, so it is not offered."""
        names, last = self.resolver.list_union(
            directory,
            include_removed=include_removed,
            start=start,
            limit=limit,
            keep=self._at_view_path,
        )
        nodes = [
            Node(posixpath.join(directory, name))
            if found is None
            else Node.of_row(found[1].path, self.resolver, *found)
            for name, found in names
        ]
        return nodes, last

    def _at_view_path(self, member: Member, row: Row) -> bool:
        """Is this file stored under its type's view template (so listed at its path)?"""
        return self._view_template.get(row.dataset_type) == self._stored_template(member, row)

    def _stored_template(self, member: Member, row: Row) -> str | None:
        key = (member.label, row.dataset_type, row.location)
        if key not in self._stored:
            try:
                definition = self.resolver.stored_definition(member, row.dataset_type)[0]
            except LookupError:  # a type defined nowhere in this view
                self._stored[key] = None
            else:
                locations = definition.locations
                self._stored[key] = (
                    locations[row.location].template.text if row.location < len(locations) else None
                )
        return self._stored[key]

    def _member(self, label: str, path: str) -> Member:
        """The repository labelled ``label`` (an output not created yet included)."""
        for member in self._members + [m for m in self.resolver.outputs if not m.exists]:
            if member.label == label:
                return member
        raise _missing(path)

    def _repo_stat(self, place: Place) -> Node:
        path = place.path
        if not place.label:
            return Node(path)
        member = self._member(place.label, path)
        relative = place.relative
        if relative == "":
            return Node(path)
        if not member.exists:
            raise _missing(path)
        rows = member.repo.registry.lookup_path(relative)
        if rows:
            return Node.of_row(path, self.resolver, member, rows[0])
        if member.repo.registry.is_directory(relative):
            return Node(path)
        raise _missing(path)

    def _repo_listdir(self, place: Place) -> list[Node]:
        path = place.path
        if not place.label:
            return [Node(posixpath.join(REPOS, m.label)) for m in self._members]
        member = self._member(place.label, path)
        if not member.exists:
            if place.relative:
                raise _missing(path)
            return []
        subdirs, rows = member.repo.registry.list_directory(place.relative, primary_only=False)
        nodes = {name: Node(posixpath.join(path, name)) for name in subdirs}
        for row in rows:
            name = posixpath.basename(row.path)
            if name not in nodes:
                nodes[name] = Node.of_row(posixpath.join(path, name), self.resolver, member, row)
        if not nodes and not self._repo_stat(place).is_directory:
            raise _missing(path)
        return [nodes[name] for name in sorted(nodes)]

    def _versions_stat(self, place: Place) -> Node:
        path, rest = place.path, place.relative
        if rest == "":
            return Node(path)
        if self._dataset_versions(rest) or any(
            m.repo.registry.is_directory(rest) for m in self.resolver.search
        ):
            return Node(path)
        dataset_path, _, name = rest.rpartition("/")
        for ref in self._dataset_versions(dataset_path):
            if _version_name(ref) == name:
                return Node(path, ref)
        raise _missing(path)

    def _versions_listdir(self, place: Place) -> list[Node]:
        path, rest = place.path, place.relative
        refs = self._dataset_versions(rest)
        if refs:
            return [Node(posixpath.join(path, _version_name(ref)), ref) for ref in refs]
        nodes = self._union_window(rest, include_removed=True)[0]
        if not nodes and not self._versions_stat(place).is_directory:
            raise _missing(path)
        # Every dataset is a directory of its versions here.
        return [Node(posixpath.join(VERSIONS, node.path)) for node in nodes]

    def _dataset_versions(self, union_path: str) -> list[DatasetRef]:
        parsed = self.parse(union_path) if union_path else None
        if parsed is None:
            return []
        try:
            return self.resolver.versions(parsed[0], parsed[1], None)
        except (LookupError, ButlerError):
            return []


def _content_format(path: str, storage: str) -> str:
    """The format the bytes written at ``path`` are read as: by extension, as a put does."""
    return formats.format_for_extension(posixpath.splitext(path)[1]) or storage


def _window_end(last: str | None, names: list[str], limit: int) -> str | None:
    """The end of a window: ``names`` (sorted, at most ``limit``) is complete to its last."""
    if limit <= 0 or len(names) < limit:
        return last
    return names[-1] if last is None else min(last, names[-1])


def _within(nodes: list[Node], last: str | None) -> list[Node]:
    return nodes if last is None else [node for node in nodes if node.name <= last]


def _version_name(ref: DatasetRef) -> str:
    extension = posixpath.splitext(ref.relative_path)[1]
    return f"v{ref.version}{extension}"


def _missing(path: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"/{path}: no such dataset or directory in this view")
