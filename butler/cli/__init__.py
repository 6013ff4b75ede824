"""The ``butler`` command line (SPEC §7): a thin front over ``Butler`` and ``maintenance``.

    butler [--debug] [--policy KEY=VALUE]... COMMAND ARGS...

One module per group of commands, each command one small function:

    app.py                    main(), the parsers and the table of commands
    messages.py               every error as one line in the command line's terms
    arguments.py              arguments shared by commands; opening the Butler
    output.py                 tables, JSON, sizes and times
    repository_commands.py    create, define, types
    dataset_commands.py       put, get, query, versions, provenance
    destination.py            where ``get -o`` writes, and how
    maintenance_commands.py   verify, repair, reindex

Startup time matters (``butler --help`` should feel instant), so these modules import
only the standard library and ``butler.errors`` at the top; each command imports the
parts of the library it needs when it runs.
"""

from butler.cli.app import main

__all__ = ["main"]
