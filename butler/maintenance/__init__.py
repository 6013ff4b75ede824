"""Whole-repository maintenance: rebuild the registry, verify everything, repair it.

    reindex(path)    the registry again from .butler/records and the files
    verify(source)   every inconsistency that can be seen (read-only)
    repair(source)   half-done puts settled, bad files and records restored from good
                     copies elsewhere, dead writers' leftovers removed

These are the only operations allowed to scan a repository; nothing on the
get/put/mount path calls them.  ``butler reindex|verify|repair`` are thin fronts.
"""

from butler.maintenance.reindex import ReindexReport, reindex
from butler.maintenance.repair import RepairReport, repair
from butler.maintenance.verify import Problem, VerifyReport, verify

__all__ = [
    "Problem",
    "ReindexReport",
    "RepairReport",
    "VerifyReport",
    "reindex",
    "repair",
    "verify",
]
