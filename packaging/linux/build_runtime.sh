#!/usr/bin/env bash
# Build the AppImage type-2 runtime (the ELF stub at the front of every AppImage) from source:
# AppImage/type2-runtime's runtime.c, statically linked against libfuse 3 (with type2-runtime's
# patch that lets it use fusermount or fusermount3), squashfuse and Debian's static zstd and
# zlib. Upstream builds the same thing with musl on Alpine and publishes it on GitHub; this
# script exists because a release binary cannot be downloaded on every build machine.
#
#   bash packaging/linux/build_runtime.sh OUT_FILE
#
# Sources: git URLs or local checkouts through RUNTIME_SRC, SQUASHFUSE_SRC, LIBFUSE_SRC (the
# defaults clone from GitHub at the pinned refs). Build tools (Debian/Ubuntu):
#   apt-get install gcc make meson ninja-build autoconf automake libtool pkg-config \
#                   libzstd-dev zlib1g-dev squashfs-tools
set -euo pipefail

OUT=${1:?usage: build_runtime.sh OUT_FILE}
RUNTIME_SRC=${RUNTIME_SRC:-https://github.com/AppImage/type2-runtime}
RUNTIME_REF=${RUNTIME_REF:-caf24f9}
SQUASHFUSE_SRC=${SQUASHFUSE_SRC:-https://github.com/vasi/squashfuse}
SQUASHFUSE_REF=${SQUASHFUSE_REF:-0.5.2}
LIBFUSE_SRC=${LIBFUSE_SRC:-https://github.com/libfuse/libfuse}
LIBFUSE_REF=${LIBFUSE_REF:-fuse-3.15.0}

work=$(mktemp -d -t quantdesk-runtime-XXXXXX)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

# export SRC REF DEST: a tree of SRC (URL or checkout, bare or not) at REF into DEST
export_tree() {
    local src=$1 ref=$2 dest=$3 repo=$1
    mkdir -p "$dest"
    if [[ $src == *://* ]]; then
        git clone --quiet "$src" "$work/clone-$(basename "$dest")"
        repo=$work/clone-$(basename "$dest")
    fi
    git -C "$repo" archive "$ref" | tar -x -C "$dest"
}

export_tree "$LIBFUSE_SRC" "$LIBFUSE_REF" "$work/libfuse"
export_tree "$SQUASHFUSE_SRC" "$SQUASHFUSE_REF" "$work/squashfuse"
export_tree "$RUNTIME_SRC" "$RUNTIME_REF" "$work/runtime"

export CFLAGS="-ffunction-sections -fdata-sections -Os"

echo "== libfuse $LIBFUSE_REF (static, patched to honour \$FUSERMOUNT_PROG)"
(
    cd "$work/libfuse"
    patch -p1 --quiet < "$work/runtime/patches/libfuse/mount.c.diff"
    meson setup build --prefix="$prefix" --libdir=lib --default-library=static \
        -Dexamples=false -Dutils=false -Dtests=false > "$work/libfuse.log"
    ninja -C build install >> "$work/libfuse.log"
)

echo "== squashfuse $SQUASHFUSE_REF (static)"
(
    cd "$work/squashfuse"
    ./autogen.sh > "$work/squashfuse.log" 2>&1
    PKG_CONFIG_PATH=$prefix/lib/pkgconfig ./configure --prefix="$prefix" --disable-shared \
        --disable-demo --without-lzo --without-lz4 --without-xz >> "$work/squashfuse.log"
    make -j"$(nproc)" install >> "$work/squashfuse.log"
    mkdir -p "$prefix/include/squashfuse"
    cp ./*.h "$prefix/include/squashfuse/"
)

echo "== runtime $RUNTIME_REF"
(
    cd "$work/runtime/src/runtime"
    gcc -std=gnu99 -Os -D_FILE_OFFSET_BITS=64 -DGIT_COMMIT="\"$RUNTIME_REF\"" \
        -I"$prefix/include" -I"$prefix/include/fuse3" -T data_sections.ld \
        -ffunction-sections -fdata-sections -Wl,--gc-sections -static-pie \
        runtime.c -L"$prefix/lib" -lsquashfuse -lsquashfuse_ll -lzstd -lz -lfuse3 -lpthread \
        -o runtime 2> "$work/runtime.log" || { cat "$work/runtime.log"; exit 1; }
    strip --strip-debug --strip-unneeded runtime
    # The type-2 magic bytes 'AI\x02' at offset 8 of the ELF header, written after strip.
    printf 'AI\x02' | dd of=runtime bs=1 count=3 seek=8 conv=notrunc status=none
)
mkdir -p "$(dirname "$OUT")"
cp "$work/runtime/src/runtime/runtime" "$OUT"
echo "runtime: $OUT ($(stat -c %s "$OUT") bytes)"
