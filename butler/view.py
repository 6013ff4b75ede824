"""The aggregator as paths: what the mount shows, answered by the resolver.

    ""                          the union view: every dataset at its view path
    .repos/<label>/<path>       one repository alone, every file it holds
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
)
from butler.registry import Row
from butler.resolver import DatasetRef, Member
from butler.template import DataId, Template

REPOS = ".repos"
VERSIONS = ".versions"
STATUS = ".butler"
SPECIAL = (REPOS, VERSIONS, STATUS)


@dataclass(frozen=True)
class Node:
    """A path in the tree: a dataset file (``ref`` set) or a directory."""

    path: str
    ref: DatasetRef | None = None

    @property
    def is_directory(self) -> bool:
        return self.ref is None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


@dataclass(frozen=True)
class WriteTarget:
    """What writing a new file at a path would put."""

    dataset_type: str
    data_id: DataId
    define_genre: str | None  # set when the path names a dataset type to define first


@dataclass(frozen=True)
class _TemplateEntry:
    template: Template
    types: tuple[str, ...]


class View:
    def __init__(self, butler: Butler) -> None:
        self.butler = butler
        self.resolver = butler.resolver
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
        self._members = self.resolver.search + [
            m for m in self.resolver.outputs if m not in self.resolver.search
        ]

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
                return Node(path, self.resolver.ref(member, row))
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

        NoOutputError (EROFS): only inputs could hold it.  InvalidDataIdError (EACCES):
        the path matches no template, or fails the round-trip rule.
        """
        parsed = self.parse(path)
        if parsed is not None:
            dataset_type, data_id = parsed
            if not any(m.accepts(dataset_type) for m in self.resolver.outputs):
                raise NoOutputError(
                    f"{path}: no output accepts {dataset_type}, only read-only inputs hold it; "
                    "add an output for it to the aggregator"
                )
            return WriteTarget(dataset_type, data_id, None)
        genres = []
        for name, genre in self.resolver.policy.genres.items():
            template = Template(genre.template, genre.keys)
            parsed_genre = template.parse(path) if template.uses_dataset_type else None
            if parsed_genre is not None and parsed_genre[0] is not None:
                genres.append((name, parsed_genre[0], parsed_genre[1]))
        if len(genres) == 1:
            name, dataset_type, data_id = genres[0]
            if not any(m.accepts(dataset_type) for m in self.resolver.outputs):
                raise NoOutputError(
                    f"{path}: would define dataset type {dataset_type}, but no output accepts "
                    "it; add an output for it to the aggregator"
                )
            return WriteTarget(dataset_type, data_id, name)
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

    def is_template_directory(self, path: str) -> bool:
        """True if ``path`` could be a directory of some template (``mkdir -p``)."""
        depth = path.count("/") + 1
        templates = [d.primary.template for d in self.resolver.policy.dataset_types.values()]
        templates += [Template(g.template, g.keys) for g in self.resolver.policy.genres.values()]
        for template in templates:
            if depth < template.depth and template.parse_directory(path) is not None:
                return True
        return False

    # -- change tracking ----------------------------------------------------

    def token(self) -> tuple[int, ...]:
        """Cheap: one indexed MAX() per repository.  Compare with an earlier token."""
        return tuple(m.repo.registry.change_seq() for m in self._members)

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
        names: dict[str, Node] = {}
        for member in members:
            subdirs, rows = member.repo.registry.list_directory(
                directory, primary_only=True, include_removed=include_removed
            )
            for name in subdirs:
                names.setdefault(name, Node(posixpath.join(directory, name)))
            for row in rows:
                if self._view_template.get(row.dataset_type) != self._stored_template(member, row):
                    continue  # stored under another template: not at this view path
                name = posixpath.basename(row.path)
                if name not in names:
                    names[name] = Node(row.path, self.resolver.ref(member, row))
        return [names[name] for name in sorted(names)]

    def _stored_template(self, member: Member, row: Row) -> str | None:
        key = (member.label, row.dataset_type, row.location)
        if key not in self._stored:
            definition = member.repo.policy.dataset_types.get(row.dataset_type)
            if definition is not None and row.dataset_type in member.storage:
                definition = definition.with_storage(member.storage[row.dataset_type])
            if definition is None or row.location >= len(definition.locations):
                self._stored[key] = None
            else:
                self._stored[key] = definition.locations[row.location].template.text
        return self._stored[key]

    def _member(self, label: str, path: str) -> Member:
        for member in self._members:
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
        rows = member.repo.registry.lookup_path(relative)
        if rows:
            return Node(path, self.resolver.ref(member, rows[0]))
        if member.repo.registry.is_directory(relative):
            return Node(path)
        raise _missing(path)

    def _repo_listdir(self, path: str, rest: str) -> list[Node]:
        if rest == "":
            return [Node(posixpath.join(REPOS, m.label)) for m in self._members]
        label, _, relative = rest.partition("/")
        member = self._member(label, path)
        subdirs, rows = member.repo.registry.list_directory(relative, primary_only=False)
        nodes = {name: Node(posixpath.join(path, name)) for name in subdirs}
        for row in rows:
            name = posixpath.basename(row.path)
            nodes.setdefault(name, Node(posixpath.join(path, name), self.resolver.ref(member, row)))
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


def _version_name(ref: DatasetRef) -> str:
    extension = posixpath.splitext(ref.relative_path)[1]
    return f"v{ref.version}{extension}"


def _missing(path: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"/{path}: no such dataset or directory in this view")
