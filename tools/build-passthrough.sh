#!/bin/bash
# Build FUSE passthrough support into the project's virtual environment
# (docs/passthrough.md): libfuse 3.17 from Debian's trixie source package, installed
# in a private prefix inside the venv, and pyfuse3 from its sdist with
# patches/pyfuse3-passthrough.patch, linked to that libfuse by an rpath. The system's
# libfuse, fusermount3 and apt configuration are never touched.
#
#   tools/build-passthrough.sh [VENV]      (default: .venv of this checkout)
#
# Every download is pinned and checked against the sha256 sums below. Sources,
# build trees and the wheel are cached in build/passthrough/ (gitignored), so a rerun
# with nothing changed only checks, and a fresh venv reinstalls from the cache.
#
# When the build fails: under CI=true this script fails; elsewhere it leaves a working
# PyPI pyfuse3 (the one installed, or a fresh one; else `pip install -e .` brings it),
# prints one line saying why passthrough is unavailable, and exits 0. Logs are in
# build/passthrough/logs/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$(realpath -m "${1:-$ROOT/.venv}")
CACHE="$ROOT/build/passthrough"
LOGS="$CACHE/logs"
PREFIX="$VENV/fuse3"
PATCH_FILE="$ROOT/patches/pyfuse3-passthrough.patch"

# --- pins ------------------------------------------------------------------------
# libfuse: Debian's fuse3 source package of trixie (Debian 13). The sums are those of
# trixie's Sources index (itself checked by apt against Debian's archive key).
FUSE3_SUITE=trixie
FUSE3_DEB_VERSION=3.17.2-3
FUSE3_UPSTREAM_VERSION=3.17.2
FUSE3_FILES=(
    "fuse3_3.17.2-3.dsc 1339847e7e6512f31d61cf1fe4598341c4b8aa43ea6dc546914b21f96f29deb3"
    "fuse3_3.17.2.orig.tar.gz 3d932431ad94e86179e5265cddde1d67aa3bb2fb09a5bd35c641f86f2b5ed06f"
    "fuse3_3.17.2-3.debian.tar.xz eaf7a177761ae8bf99ea97619f2cccf83f169b4f000e17b6106834e69456b5a2"
)
# pyfuse3: its sdist on PyPI (PyPI has no wheel of it; pip builds this same sdist
# when the patched build is unavailable).
PYFUSE3_VERSION=3.5.0
PYFUSE3_SDIST=pyfuse3-3.5.0.tar.gz
PYFUSE3_SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
# Must match BUTLERFS_PATCH in the patch; the local version marks the build in pip.
PATCH_LEVEL=1
PYFUSE3_LOCAL_VERSION="$PYFUSE3_VERSION+butlerfs$PATCH_LEVEL"
# Build-only tools (in build/passthrough/tools, never in the project's venv).
# Cython 3.2.4 generated the C file shipped in the sdist.
BUILD_TOOLS=(meson==1.10.1 ninja==1.13.0 Cython==3.2.4 setuptools==80.9.0 setuptools-scm==9.2.2)

# --- helpers ---------------------------------------------------------------------
STEP_LOG=""
say() { echo "passthrough: $*"; }
# fail REASON: stop the build; the end of this script reports REASON once.
fail() {
    echo "$*" >"$CACHE/.failure"
    exit 1
}
# run LOGNAME CMD...: run quietly with output in logs/LOGNAME.log; on failure, the
# reason names the step, its last error line and the log (whose end CI also prints).
run() {
    local name=$1
    shift
    STEP_LOG="$LOGS/$name.log"
    if ! "$@" >"$STEP_LOG" 2>&1; then
        [ "${CI:-}" != "true" ] || tail -n 25 "$STEP_LOG" >&2
        local last
        last=$(grep -i 'error' "$STEP_LOG" | tail -n 1 | cut -c1-160 || true)
        fail "$name failed${last:+ ($last)}; log: ${STEP_LOG#"$ROOT"/}"
    fi
}
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# A key over everything that shapes the result: a change to a pin, the patch, this
# script, the venv's Python or the prefix rebuilds what depends on it.
key_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

venv_python="$VENV/bin/python"

installed_patch_level() {
    "$venv_python" -c 'import pyfuse3; print(getattr(pyfuse3, "BUTLERFS_PATCH", 0))' 2>/dev/null ||
        echo none
}

check_prerequisites() {
    local missing=()
    local tool
    for tool in apt-get dpkg-source dpkg-buildflags gcc pkg-config patch sha256sum; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] ||
        fail "missing tools: ${missing[*]} (make system installs them: dpkg-dev, gcc, pkg-config, patch)"
    [ -x "$venv_python" ] || fail "no virtual environment at $VENV (run make venv first)"
    local include
    include=$("$venv_python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    [ -f "$include/Python.h" ] || fail "Python.h is missing in $include (install python3-dev)"
    [ -f "$PATCH_FILE" ] || fail "the patch $PATCH_FILE is missing"
    grep -q "^+BUTLERFS_PATCH = $PATCH_LEVEL\$" "$PATCH_FILE" ||
        fail "PATCH_LEVEL=$PATCH_LEVEL here does not match BUTLERFS_PATCH in $PATCH_FILE"
}

# --- libfuse source: apt-get source through a private source list ----------------
fuse3_sources_ok() {
    local entry name sum
    for entry in "${FUSE3_FILES[@]}"; do
        read -r name sum <<<"$entry"
        [ -f "$CACHE/src/$name" ] && [ "$(sha256_of "$CACHE/src/$name")" = "$sum" ] || return 1
    done
}

fetch_fuse3_source() {
    fuse3_sources_ok && return 0
    local apt="$CACHE/apt"
    mkdir -p "$apt/lists/partial" "$apt/parts" "$apt/cache/archives/partial" "$CACHE/src"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
        "http://deb.debian.org/debian $FUSE3_SUITE main" >"$apt/sources.list"
    # Our own source list, list directory and cache: the system's apt state is
    # neither read for sources nor written.
    local options=(
        -o "Dir::Etc::SourceList=$apt/sources.list"
        -o "Dir::Etc::SourceParts=$apt/parts"
        -o "Dir::State::Lists=$apt/lists"
        -o "Dir::Cache=$apt/cache"
        -o "APT::Sandbox::User=root"
    )
    run apt-update apt-get "${options[@]}" update
    (cd "$CACHE/src" && run apt-source apt-get "${options[@]}" --download-only source \
        "fuse3=$FUSE3_DEB_VERSION") ||
        fail "apt-get source fuse3=$FUSE3_DEB_VERSION from $FUSE3_SUITE failed; if $FUSE3_SUITE has" \
            "moved on, pin its new version and sums in tools/build-passthrough.sh." \
            "Log: ${LOGS#"$ROOT"/}/apt-source.log"
    local entry name sum actual
    for entry in "${FUSE3_FILES[@]}"; do
        read -r name sum <<<"$entry"
        [ -f "$CACHE/src/$name" ] || fail "apt-get source did not fetch $name"
        actual=$(sha256_of "$CACHE/src/$name")
        if [ "$actual" != "$sum" ]; then
            rm -f "$CACHE/src/$name"
            fail "sha256 mismatch for $name: expected $sum, got $actual"
        fi
    done
}

unpack_fuse3_source() {
    local tree="$CACHE/src/fuse3-$FUSE3_UPSTREAM_VERSION"
    local stamp="$tree/.butlerfs-unpacked-$FUSE3_DEB_VERSION"
    [ -f "$stamp" ] && return 0
    rm -rf "$tree"
    # --no-check: the .dsc's maintainer signature needs debian-keyring, which Debian 12
    # lacks; all three files were checked against the pinned sums above instead.
    # dpkg-source applies Debian's patches (debian/patches/series).
    (cd "$CACHE/src" && run dpkg-source dpkg-source --no-check -x "fuse3_$FUSE3_DEB_VERSION.dsc")
    touch "$stamp"
}

# --- build tools -----------------------------------------------------------------
TOOLS=""
make_tools() {
    local key
    key=$(key_of "${BUILD_TOOLS[@]}" "$("$venv_python" -c 'import sys; print(sys.version)')")
    TOOLS="$CACHE/tools-$key"
    [ -f "$TOOLS/.complete" ] && return 0
    rm -rf "$TOOLS"
    local base
    base=$("$venv_python" -c 'import sys; print(sys._base_executable)')
    run tools-venv "$base" -m venv "$TOOLS"
    run tools-install "$TOOLS/bin/python" -m pip install --disable-pip-version-check -q \
        --only-binary :all: "${BUILD_TOOLS[@]}"
    touch "$TOOLS/.complete"
}

# --- libfuse build and install ---------------------------------------------------
build_libfuse() {
    local key build
    key=$(key_of "$FUSE3_DEB_VERSION" "$PREFIX" "${BUILD_TOOLS[@]}")
    build="$CACHE/fuse3-build-$key"
    if [ ! -f "$build/.complete" ]; then
        rm -rf "$build"
        # Debian's own flags (hardening=+all, as debian/rules sets), meson's plain type.
        local cflags ldflags
        cflags=$(DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --get CFLAGS)
        ldflags=$(DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --get LDFLAGS)
        # utils=false: no fusermount3 of ours (it would need setuid root); libfuse then
        # runs the system's fusermount3 from PATH for mounts without CAP_SYS_ADMIN.
        # No examples, tests, init script or udev rules either.
        CFLAGS="$cflags" LDFLAGS="$ldflags" PATH="$TOOLS/bin:$PATH" \
            run meson-setup "$TOOLS/bin/meson" setup "$build" \
            "$CACHE/src/fuse3-$FUSE3_UPSTREAM_VERSION" \
            --prefix="$PREFIX" --libdir=lib --buildtype=plain \
            -Ddefault_library=shared -Dutils=false -Dexamples=false -Dtests=false \
            -Dinitscriptdir= -Duseroot=false
        PATH="$TOOLS/bin:$PATH" run meson-compile "$TOOLS/bin/meson" compile -C "$build"
        touch "$build/.complete"
    fi
    PATH="$TOOLS/bin:$PATH" run meson-install "$TOOLS/bin/meson" install -C "$build" --no-rebuild
    [ -f "$PREFIX/lib/libfuse3.so.4" ] || fail "libfuse3.so.4 is missing in $PREFIX/lib after install"
    local version
    version=$(PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" pkg-config --modversion fuse3)
    [ "$version" = "$FUSE3_UPSTREAM_VERSION" ] ||
        fail "pkg-config finds fuse3 $version in $PREFIX, expected $FUSE3_UPSTREAM_VERSION"
}

# --- pyfuse3 ---------------------------------------------------------------------
WHEEL=""
build_pyfuse3() {
    local key wheels
    key=$(key_of "$PYFUSE3_LOCAL_VERSION" "$(sha256_of "$PATCH_FILE")" "$PREFIX" \
        "$FUSE3_DEB_VERSION" "${BUILD_TOOLS[@]}" "$("$venv_python" -c 'import sys; print(sys.version)')")
    wheels="$CACHE/wheels-$key"
    if [ -f "$wheels/.complete" ]; then
        WHEEL=$(find "$wheels" -name 'pyfuse3-*.whl' | head -n 1)
        [ -n "$WHEEL" ] && return 0
    fi

    local dl="$CACHE/download"
    mkdir -p "$dl"
    if [ ! -f "$dl/$PYFUSE3_SDIST" ] || [ "$(sha256_of "$dl/$PYFUSE3_SDIST")" != "$PYFUSE3_SHA256" ]; then
        rm -f "$dl/$PYFUSE3_SDIST"
        echo "pyfuse3==$PYFUSE3_VERSION --hash=sha256:$PYFUSE3_SHA256" >"$dl/requirements.txt"
        # --no-build-isolation: pip prepares the sdist's metadata with our pinned tools
        # instead of fetching unpinned ones.
        run pyfuse3-download "$TOOLS/bin/python" -m pip download --disable-pip-version-check \
            --no-deps --no-binary :all: --no-build-isolation --require-hashes \
            -r "$dl/requirements.txt" -d "$dl"
    fi
    [ "$(sha256_of "$dl/$PYFUSE3_SDIST")" = "$PYFUSE3_SHA256" ] ||
        fail "sha256 mismatch for $PYFUSE3_SDIST (expected $PYFUSE3_SHA256)"

    local src="$CACHE/pyfuse3-src"
    rm -rf "$src" "$wheels"
    mkdir -p "$src" "$wheels"
    tar -xzf "$dl/$PYFUSE3_SDIST" -C "$src" --strip-components=1 --no-same-owner
    run pyfuse3-patch patch -d "$src" -p1 --forward --batch -i "$PATCH_FILE"
    # The sdist's generated C predates the patch: Cython regenerates it from the .pyx.
    rm -f "$src/src/pyfuse3/__init__.c"
    PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" \
        SETUPTOOLS_SCM_PRETEND_VERSION_FOR_PYFUSE3="$PYFUSE3_LOCAL_VERSION" \
        run pyfuse3-wheel "$TOOLS/bin/python" -m pip wheel --disable-pip-version-check \
        --no-deps --no-build-isolation -w "$wheels" "$src"
    WHEEL=$(find "$wheels" -name 'pyfuse3-*.whl' | head -n 1)
    [ -n "$WHEEL" ] || fail "pip wheel produced no pyfuse3 wheel (log: ${LOGS#"$ROOT"/}/pyfuse3-wheel.log)"
    touch "$wheels/.complete"
}

install_pyfuse3() {
    # --force-reinstall: a rebuild keeps the version; --no-deps: leave trio alone. The
    # second call only adds pyfuse3's dependencies if missing (make runs this script
    # before `pip install -e .`, so that pip keeps this pyfuse3 instead of building
    # PyPI's from source first).
    run pyfuse3-install "$venv_python" -m pip install --disable-pip-version-check -q \
        --no-deps --force-reinstall "$WHEEL"
    run pyfuse3-install-deps "$venv_python" -m pip install --disable-pip-version-check -q "$WHEEL"
}

verify() {
    # The venv's pyfuse3 is ours, and it loads our libfuse through its rpath.
    local check
    check=$(
        env -u LD_LIBRARY_PATH "$venv_python" - "$PREFIX/lib/libfuse3.so.4" "$PATCH_LEVEL" <<'EOF'
import os, sys
import pyfuse3
want_lib, level = sys.argv[1], int(sys.argv[2])
if getattr(pyfuse3, "BUTLERFS_PATCH", 0) != level:
    sys.exit(f"pyfuse3 in the venv is not the patched build (BUTLERFS_PATCH != {level})")
with open("/proc/self/maps") as maps:
    libs = {line.split()[-1] for line in maps if "libfuse3.so" in line}
if {os.path.realpath(lib) for lib in libs} != {os.path.realpath(want_lib)}:
    sys.exit(f"pyfuse3 loaded {sorted(libs)} instead of {want_lib}")
print(pyfuse3.__version__)
EOF
    ) || fail "the installed pyfuse3 fails its check: $check"
    INSTALLED_VERSION=$check
}

stamp_key() {
    key_of "$(sha256_of "${BASH_SOURCE[0]}")" "$(sha256_of "$PATCH_FILE")" "$PREFIX" \
        "$("$venv_python" -c 'import sys; print(sys.version)' 2>/dev/null || echo none)"
}

main() {
    mkdir -p "$LOGS"
    rm -f "$CACHE/.failure"
    check_prerequisites
    local stamp="$PREFIX/.butlerfs-passthrough"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(stamp_key)" ] &&
        [ "$(installed_patch_level)" = "$PATCH_LEVEL" ]; then
        return 0 # up to date: nothing to do
    fi
    local started=$SECONDS
    fetch_fuse3_source
    unpack_fuse3_source
    make_tools
    build_libfuse
    build_pyfuse3
    install_pyfuse3
    verify
    stamp_key >"$stamp"
    say "libfuse $FUSE3_DEB_VERSION (Debian $FUSE3_SUITE) in ${PREFIX#"$ROOT"/}," \
        "pyfuse3 $INSTALLED_VERSION installed ($((SECONDS - started)) s)"
}

mkdir -p "$CACHE"
# main runs in a subshell that `fail` can leave; errexit must stay on inside it, which
# it would not as the condition of an `if`.
shopt -s inherit_errexit
set +e
(
    set -eE
    trap '[ -f "$CACHE/.failure" ] || echo "line $LINENO failed: $BASH_COMMAND" >"$CACHE/.failure"' ERR
    main
)
status=$?
set -e
[ $status -eq 0 ] && exit 0
reason=$(cat "$CACHE/.failure" 2>/dev/null || echo "unexpected error (see the output above)")
if [ "${CI:-}" = "true" ]; then
    echo "passthrough: build failed under CI=true: $reason" >&2
    exit 1
fi
# Outside CI: keep (or restore) PyPI's pyfuse3 so the project still runs, without
# passthrough.
if [ -x "$venv_python" ] && ! "$venv_python" -c 'import pyfuse3' 2>/dev/null; then
    "$venv_python" -m pip uninstall -y -q pyfuse3 >/dev/null 2>&1 || true
    "$venv_python" -m pip install --disable-pip-version-check -q "pyfuse3==$PYFUSE3_VERSION" \
        >"$LOGS/pypi-fallback.log" 2>&1 ||
        echo "passthrough: installing PyPI's pyfuse3 failed too: see ${LOGS#"$ROOT"/}/pypi-fallback.log" >&2
fi
echo "passthrough: FUSE passthrough unavailable, using PyPI's pyfuse3: $reason"
exit 0
