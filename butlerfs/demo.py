"""``make demo``: sample repositories, mounted, used with real tools, unmounted.

Every step prints the command it runs and that command's real output, so the
transcript reads like a shell session.  The daemon runs in the foreground (``-f``)
with its log in ``demo-work/butlerfs.log``, so a refusal can show the daemon's
reason beside the errno ``cp`` prints (a daemonized mount logs to syslog).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from butler.demo import build_samples


def run(*command: str | Path, cwd: Path | None = None) -> str:
    """Run a real command, print it and its output; stop the demo if it fails."""
    words = [str(word) for word in command]
    print(f"\n$ {shlex.join(words)}", flush=True)
    done = subprocess.run(words, cwd=cwd, capture_output=True, text=True, timeout=120)
    output = (done.stdout + done.stderr).rstrip()
    lines = output.splitlines()
    print(
        "\n".join(lines[:25] + ([f"... ({len(lines) - 25} more lines)"] if len(lines) > 25 else []))
    )
    if done.returncode != 0:
        raise SystemExit(f"demo: {words[0]} failed with exit status {done.returncode}")
    return output


def tool(name: str) -> str:
    """A command next to this Python (the venv's butler/butlerfs), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "demo-work").absolute()
    mountpoint = root / "mnt"
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.monotonic()

    print("== 1. sample repositories: inputs raw and calib, outputs work (rw) and archive (w)")
    aggregator = build_samples(root)
    run("cat", aggregator)
    mountpoint.mkdir()

    print("\n== 2. mount the aggregator")
    run(tool("butlerfs"), "mount", aggregator, mountpoint, "-o", f"log={root / 'butlerfs.log'}")
    try:
        demo_mounted(root, aggregator, mountpoint)
    finally:
        print("\n== 7. unmount")
        run(tool("butlerfs"), "umount", mountpoint)
    assert not os.path.ismount(mountpoint)
    print(f"\nmounted: {os.path.ismount(mountpoint)}; demo took {time.monotonic() - started:.1f} s")
    return 0


def demo_mounted(root: Path, aggregator: Path, mountpoint: Path) -> None:
    import numpy as np
    from astropy.io import fits

    from butler import Butler

    run("grep", "fuse.butlerfs", "/proc/mounts")
    print("\n== 3. browse: the union view at template paths, exact sizes, commit times")
    run("ls", "-la", mountpoint)
    run("ls", "-l", mountpoint / "raw" / "v0903334")
    run("find", mountpoint / "bias", mountpoint / "src", "-type", "f")
    run("cat", mountpoint / ".butler" / "status")

    print("\n== 4. read an image through the mount with astropy (memmap) and compare")
    image = mountpoint / "raw" / "v0903334" / "raw-v0903334-c001.fits"
    with fits.open(image, memmap=True) as hdul:
        through_mount = np.array(hdul[0].data)
        print(
            f"astropy: {image.name}: shape {through_mount.shape}, VISIT={hdul[0].header['VISIT']}"
        )
    library = Butler(aggregator).get("raw", visit=903334, ccd=1)
    assert isinstance(library, fits.HDUList)
    same = np.array_equal(through_mount, library[0].data)
    print(f"same pixels as Butler.get: {same}")
    assert same

    print("\n== 5. copy a new image in: a put to both outputs, all or nothing")
    new = root / "calexp-new.fits"
    fits.HDUList([fits.PrimaryHDU(np.full((128, 128), 7.0, dtype=np.float32))]).writeto(new)
    target = mountpoint / "calexp" / "v0903334" / "calexp-v0903334-c002.fits"
    run("mkdir", "-p", target.parent)
    run("cp", new, target)
    run("ls", "-l", target)
    run("ls", "-l", root / "work" / "calexp" / "v0903334", root / "archive" / "calexp" / "v0903334")
    run(tool("butler"), "query", aggregator, "calexp", "visit=903334")
    got = Butler(aggregator).get("calexp", visit=903334, ccd=2)
    assert isinstance(got, fits.HDUList)
    print(f"Butler.get of the copied image: mean {float(got[0].data.mean())}")

    print("\n== 6. its extended attributes")
    run("getfattr", "-d", "-m", "user.butler", target)
    print("\n   and a refusal: a path that matches no template")
    done = subprocess.run(
        ["cp", str(new), str(mountpoint / "notes.fits")],
        capture_output=True,
        text=True,
        check=False,
    )
    print(f"$ cp {new.name} {mountpoint}/notes.fits\n{done.stderr.strip()}")
    assert done.returncode != 0
    print("\n   the reason, as the mount tells it")
    run("cat", mountpoint / ".butler" / "log")


if __name__ == "__main__":
    sys.exit(main())
