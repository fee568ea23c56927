#!/usr/bin/env bash
# Wrap the one-folder build in a type-2 AppImage: AppDir + squashfs (zstd) + runtime.
#
#   bash packaging/linux/build_appimage.sh dist/QuantDesk dist/QuantDesk-x86_64.AppImage
#
# This is what appimagetool does, without its network-only extras (zsync update info,
# signing). The runtime is $APPIMAGE_RUNTIME when set (for example the official
# runtime-x86_64 from github.com/AppImage/type2-runtime/releases), else the committed
# packaging/linux/runtime-<arch> (made by build_runtime.sh, see packaging/README.md), else
# build/appimage/runtime-<arch>, built from source by build_runtime.sh when missing.
set -euo pipefail

DIST=$(readlink -f "${1:?usage: build_appimage.sh DIST_FOLDER OUT.AppImage}")
OUT=$(readlink -f "${2:?usage: build_appimage.sh DIST_FOLDER OUT.AppImage}")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=$ROOT/build/appimage
RUNTIME=${APPIMAGE_RUNTIME:-$HERE/runtime-$(uname -m)}
[[ -f $RUNTIME ]] || RUNTIME=$BUILD/runtime-$(uname -m)

[[ -x $DIST/quantdesk ]] || { echo "no $DIST/quantdesk: run PyInstaller first" >&2; exit 2; }
command -v mksquashfs > /dev/null \
    || { echo "mksquashfs is missing: apt-get install squashfs-tools" >&2; exit 2; }
if [[ ! -f $RUNTIME ]]; then
    bash "$HERE/build_runtime.sh" "$RUNTIME"
fi

appdir=$BUILD/QuantDesk.AppDir
rm -rf "$appdir"
mkdir -p "$appdir/usr/lib" "$appdir/usr/share/applications" \
    "$appdir/usr/share/icons/hicolor/256x256/apps" "$appdir/usr/share/metainfo"
# Hard links when dist/ and build/ share a file system: no second copy of ~1 GB.
cp -al "$DIST" "$appdir/usr/lib/quantdesk" 2> /dev/null || cp -a "$DIST" "$appdir/usr/lib/quantdesk"
# The PyInstaller bootloader finds its _internal folder through /proc/self/exe, so AppRun
# can be a plain link to it.
ln -s usr/lib/quantdesk/quantdesk "$appdir/AppRun"
cp "$HERE/quantdesk.desktop" "$appdir/quantdesk.desktop"
cp "$HERE/quantdesk.desktop" "$appdir/usr/share/applications/"
cp "$HERE/org.quantdesk.QuantDesk.appdata.xml" "$appdir/usr/share/metainfo/"
cp "$ROOT/packaging/icons/quantdesk.png" "$appdir/quantdesk.png"
cp "$ROOT/packaging/icons/quantdesk.png" "$appdir/usr/share/icons/hicolor/256x256/apps/"
ln -s quantdesk.png "$appdir/.DirIcon"

squashfs=$BUILD/QuantDesk.squashfs
rm -f "$squashfs"
mksquashfs "$appdir" "$squashfs" -root-owned -noappend -comp zstd -b 1M -quiet -no-progress
mkdir -p "$(dirname "$OUT")"
cat "$RUNTIME" "$squashfs" > "$OUT.part"
chmod 755 "$OUT.part"
mv "$OUT.part" "$OUT"
rm -f "$squashfs"
echo "AppImage: $OUT ($(du -h "$OUT" | cut -f1))"
