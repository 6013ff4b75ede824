"""butlerfs: the aggregator of repositories as a directory tree, over FUSE (pyfuse3 on trio).

Layers, each module one concept; imports go downwards only (``butlerfs → butler``):

    cli          command line: mount / umount / the fstab form, daemonizing
    daemon       one mount's life: open the Butler, serve, signals, clean exit
    systemd      sd_notify readiness for Type=notify units
    operations   the pyfuse3 handlers: thin, each asks the tree and answers
    access       who may use the mount (allow_other, allow_users)
    passthrough  FUSE passthrough: backing ids of committed datasets read by the kernel
    live         the change poll and the kernel cache invalidations it causes
    handles      open files and directories
    attributes   entries → pyfuse3.EntryAttributes (modes, sizes, times, cache timeouts)
    xattrs       the user.butler.* extended attributes of a dataset
    writes       drafts and their commit as a put, unlink, rename, mkdir
    tree         paths → entries: the library's View plus drafts, empty directories and
                 the .butler/ files; what an old inode shows; the caches
    entries      what stat shows, and the daemon's cache of it
    scratch      files being written (drafts) in the mount's scratch directory
    inodes       stable inode numbers (a file's names its version), inode → path table
    worker       blocking calls in threads behind a capacity limit
    errors       exceptions → errno, applied once around every handler
    logbook      .butler/log (recent refusals) and where the log file goes
    exits        is the task closing a file exiting, killed, still holding it?
    options      ``-o`` mount options

Design notes and the write protocol are in docs/mount.md.
"""

from butler import __version__

__all__ = ["__version__"]
