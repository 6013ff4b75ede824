"""The aggregator as paths: what the mount shows, answered by the resolver.

    ""                          the union view: every dataset at its view path
    .repos/<label>/<path>       one repository alone, every file it holds (an output's
                                takes writes, by its own templates, for it alone)
    .versions/<view path>/v<N><ext>   every version of a dataset, removed ones too

A dataset's *view path* is its type's template in the effective policy (the
first repository in search order defining the type, under the aggregator's
overrides) rendered with its data ID.  Path to dataset is a template parse
plus one registry lookup per repository; a directory listing is one indexed
query per repository for that directory's own entries, never a scan.
``.butler/status`` is the mount's own business; :meth:`View.status` feeds it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from butler.butler import Butler
from butler.errors import (
    ButlerError,
    DatasetNotFoundError,
    InvalidDataIdError,
    NoOutputError,
    ReadOnlyError,
)
from butler.policy import DatasetTypeDef
from butler.registry import Notices, Row
from butler.resolver import DatasetRef, Member, Resolver
from butler.template import DataId, Template

REPOS = ".repos"
VERSIONS = ".versions"
STATUS = ".butler"
SPECIAL = (REPOS, VERSIONS, STATUS)


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


@dataclass(frozen=True)
class _TemplateEntry:
    template: Template
    types: tuple[str, ...]


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

    # -- questions about paths ------------------------------------------------

    def stat(self, path: str) -> Node:
        """The node at ``path`` (relative, no leading slash); DatasetNotFoundError if none."""
        head, _, rest = path.partition("/")
        if head == REPOS:
            return self._repo_stat(path, rest)
        if head == VERSIONS:
            return self._versions_stat(path, rest)
        if path in ("", STATUS):
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
        """The children of the directory ``path``, sorted by name."""
        head, _, rest = path.partition("/")
        if head == REPOS:
            return self._repo_listdir(path, rest)
        if head == VERSIONS:
            return self._versions_listdir(path, rest)
        if path == STATUS:
            return []
        nodes = self._union_listdir(path, self.resolver.search, include_removed=False)
        if path == "":
            nodes = [Node(name) for name in SPECIAL] + nodes
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
        head, _, rest = path.partition("/")
        if path == "" or head in (VERSIONS, STATUS):
            return None
        if head == REPOS:
            label, _, relative = rest.partition("/")
            if not label:
                return None
            member = self._member(label, path)
            subdirs, rows = member.repo.registry.list_directory(
                relative, primary_only=False, start=start, limit=limit
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
        nodes, last = self._union_window(
            path, self.resolver.search, include_removed=False, start=start, limit=limit
        )
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
        template, or fails the round-trip rule.
        """
        head, _, rest = path.partition("/")
        if head == REPOS:
            label, _, relative = rest.partition("/")
            return self.classify_repo_write(label, relative)
        parsed = self.parse(path)
        if parsed is not None:
            dataset_type, data_id = parsed
            if not any(m.accepts(dataset_type) for m in self.resolver.outputs):
                raise NoOutputError(
                    f"{path}: no output accepts {dataset_type}, only read-only inputs hold it; "
                    "add an output for it to the aggregator"
                )
            return WriteTarget(dataset_type, data_id, None)
        name, dataset_type, data_id = self._new_type(path, path)
        if not any(m.accepts(dataset_type) for m in self.resolver.outputs):
            raise NoOutputError(
                f"{path}: would define dataset type {dataset_type}, but no output accepts "
                "it; add an output for it to the aggregator"
            )
        return WriteTarget(dataset_type, data_id, name)

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
            dataset_type, data_id = parsed
            if not member.accepts(dataset_type):
                raise NoOutputError(
                    f"{path}: output {label} does not accept {dataset_type} (its datasetTypes: "
                    f"{sorted(member.dataset_types or ())}); write it under another output's "
                    ".repos/ directory"
                )
            return WriteTarget(dataset_type, data_id, None, (label,))
        name, dataset_type, data_id = self._new_type(relative, path)
        if not member.accepts(dataset_type):
            raise NoOutputError(
                f"{path}: would define dataset type {dataset_type}, but output {label} does "
                "not accept it"
            )
        return WriteTarget(dataset_type, data_id, name, (label,))

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
            "e.g. v0000123 rather than v123); see the templates with 'butler query' or "
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

    def _repo_parse(self, member: Member, relative: str) -> tuple[str, DataId] | None:
        """(dataset type, data ID) of a path in ``member`` by the locations a put writes;
        a type the member accepts wins over one it does not."""
        refused = None
        for definition in self._repo_definitions(member):
            for location in definition.locations:
                if not location.writable:
                    continue
                parsed = location.template.parse(relative)
                if parsed is None or parsed[0] not in (None, definition.name):
                    continue
                if member.accepts(definition.name):
                    return definition.name, parsed[1]
                refused = refused or (definition.name, parsed[1])
        return refused

    def is_template_directory(self, path: str) -> bool:
        """True if ``path`` could be a directory of some template (``mkdir -p``).

        Under ``.repos/<label>/``, of that repository's own templates (or a genre's).
        """
        head, _, rest = path.partition("/")
        if head == REPOS:
            label, _, directory = rest.partition("/")
            member = next((m for m in self._members if m.label == label), None)
            if member is None or not directory:
                return False
            templates = [
                location.template
                for definition in self._repo_definitions(member)
                for location in definition.locations
                if location.writable
            ]
        else:
            directory = path
            templates = [d.primary.template for d in self.resolver.policy.dataset_types.values()]
        depth = directory.count("/") + 1
        templates += [Template(g.template, g.keys) for g in self.resolver.policy.genres.values()]
        for template in templates:
            if depth < template.depth and template.parse_directory(directory) is not None:
                return True
        return False

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

    def _union_listdir(
        self, directory: str, members: Iterable[Member], *, include_removed: bool
    ) -> list[Node]:
        return self._union_window(directory, members, include_removed=include_removed)[0]

    def _union_window(
        self,
        directory: str,
        members: Iterable[Member],
        *,
        include_removed: bool,
        start: str = "",
        limit: int = -1,
    ) -> tuple[list[Node], str | None]:
        """The union listing from ``start`` (all of it by default), and where it is complete.

        With a ``limit``, each repository's names are complete only up to the last one it
        returned; the result is complete up to the smallest of those (``None``: the end).
        """
        names: dict[str, Node] = {}
        last: str | None = None
        for member in members:
            subdirs, rows = member.repo.registry.list_directory(
                directory,
                primary_only=True,
                include_removed=include_removed,
                start=start,
                limit=limit,
            )
            if limit > 0:
                last = _window_end(last, subdirs, limit)
                last = _window_end(last, [posixpath.basename(row.path) for row in rows], limit)
            for name in subdirs:
                names.setdefault(name, Node(posixpath.join(directory, name)))
            for row in rows:
                if self._view_template.get(row.dataset_type) != self._stored_template(member, row):
                    continue  # stored under another template: not at this view path
                name = posixpath.basename(row.path)
                if name not in names:
                    names[name] = Node.of_row(row.path, self.resolver, member, row)
        return [names[name] for name in sorted(names)], last

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

    def _repo_stat(self, path: str, rest: str) -> Node:
        if rest == "":
            return Node(path)
        label, _, relative = rest.partition("/")
        member = self._member(label, path)
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

    def _repo_listdir(self, path: str, rest: str) -> list[Node]:
        if rest == "":
            return [Node(posixpath.join(REPOS, m.label)) for m in self._members]
        label, _, relative = rest.partition("/")
        member = self._member(label, path)
        if not member.exists:
            if relative:
                raise _missing(path)
            return []
        subdirs, rows = member.repo.registry.list_directory(relative, primary_only=False)
        nodes = {name: Node(posixpath.join(path, name)) for name in subdirs}
        for row in rows:
            name = posixpath.basename(row.path)
            if name not in nodes:
                nodes[name] = Node.of_row(posixpath.join(path, name), self.resolver, member, row)
        if not nodes and not self._repo_stat(path, rest).is_directory:
            raise _missing(path)
        return [nodes[name] for name in sorted(nodes)]

    def _versions_stat(self, path: str, rest: str) -> Node:
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

    def _versions_listdir(self, path: str, rest: str) -> list[Node]:
        refs = self._dataset_versions(rest)
        if refs:
            return [Node(posixpath.join(path, _version_name(ref)), ref) for ref in refs]
        nodes = self._union_listdir(rest, self.resolver.search, include_removed=True)
        if not nodes and not self._versions_stat(path, rest).is_directory:
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
