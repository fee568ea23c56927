#!/usr/bin/env bash
# Build the Linux package: the PyInstaller one-folder app, the AppImage made from it, and the
# smoke test of the AppImage. One command, from the repository root:
#
#   bash packaging/build_linux.sh
#
# Output: dist/QuantDesk/ (one folder, `quantdesk` inside) and dist/QuantDesk-x86_64.AppImage.
# The build freezes the committed tree (git HEAD, copied to build/src) so that edits in
# progress never end up half in the package; QUANTDESK_BUILD_FROM=worktree freezes the files
# as they are on disk instead. Environment:
#   PYTHON                      the venv's python with PyInstaller (default .venv/bin/python)
#   QUANTDESK_BUILD_FROM        head (default) or worktree
#   QUANTDESK_SKIP_FREEZE=1     reuse dist/QuantDesk (only repackage and test)
#   QUANTDESK_APPIMAGE=0        no AppImage (the one-folder build is tested instead)
#   QUANTDESK_SMOKE=0           no smoke test; =both tests the folder and the AppImage
#   APPIMAGE_RUNTIME            a prebuilt type-2 runtime (else built from source once)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
DIST=$ROOT/dist/QuantDesk
APPIMAGE=$ROOT/dist/QuantDesk-$(uname -m).AppImage
SRC=$ROOT/build/src

seconds() { awk -v a="$1" -v b="$(date +%s)" 'BEGIN { print b - a }'; }

if [[ ${QUANTDESK_SKIP_FREEZE:-0} != 1 ]]; then
    "$PYTHON" -c "import PyInstaller" 2> /dev/null || {
        echo "PyInstaller is not installed in $PYTHON: pip install -e '.[package]'" >&2
        exit 2
    }
    rm -rf "$SRC"
    mkdir -p "$SRC"
    if [[ ${QUANTDESK_BUILD_FROM:-head} == worktree ]]; then
        cp -a qtapp packaging "$SRC/"
        echo "== freezing the working tree"
    else
        git archive HEAD qtapp packaging | tar -x -C "$SRC"
        echo "== freezing git HEAD $(git rev-parse --short HEAD)"
    fi
    find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
    t0=$(date +%s)
    "$PYTHON" -m PyInstaller --noconfirm --log-level WARN --distpath "$ROOT/dist" \
        --workpath "$ROOT/build/pyinstaller" "$SRC/packaging/quantdesk.spec"
    echo "== PyInstaller: $(seconds "$t0") s"
fi
[[ -x $DIST/quantdesk ]] || { echo "no $DIST/quantdesk" >&2; exit 1; }
echo "== one-folder build: $DIST ($(du -sh "$DIST" | cut -f1))"

artefacts=("$DIST/quantdesk")
if [[ ${QUANTDESK_APPIMAGE:-1} != 0 ]]; then
    t0=$(date +%s)
    bash packaging/linux/build_appimage.sh "$DIST" "$APPIMAGE"
    echo "== AppImage: $(seconds "$t0") s"
    case ${QUANTDESK_SMOKE:-1} in
        both) artefacts=("$DIST/quantdesk" "$APPIMAGE") ;;
        *) artefacts=("$APPIMAGE") ;;
    esac
fi

if [[ ${QUANTDESK_SMOKE:-1} != 0 ]]; then
    for artefact in "${artefacts[@]}"; do
        echo "== smoke test: $artefact"
        bash packaging/smoke_test.sh "$artefact"
    done
fi
echo "== done"
du -sh "$DIST" "${APPIMAGE}" 2> /dev/null || true
