; Inno Setup 6 script: QuantDesk for Windows (x64) from the PyInstaller one-folder build.
;
; On Windows, from the repository root, after packaging\windows\build_windows.ps1 (or a
; PyInstaller run that left dist\QuantDesk\):
;
;   iscc packaging\windows\quantdesk.iss                      -> dist\QuantDesk-0.1.0-cpu-setup.exe
;   iscc /DVariant=cuda packaging\windows\quantdesk.iss       -> dist\QuantDesk-0.1.0-cuda-setup.exe
;
; The variant only names the installer: which torch is inside is decided by the venv the
; one-folder build was frozen from (the CPU wheel by default; the CUDA wheel for "cuda", see
; packaging/README.md). A CUDA build is 3 to 5 GB, so it is split into setup.exe + .bin
; slices (Inno Setup cannot put more than about 2 GB in one exe).
;
; Installs per user by default (no administrator rights; the dialog offers all users).
; User data stays in %LOCALAPPDATA%\QuantDesk and is kept on uninstall.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#ifndef Variant
  #define Variant "cpu"
#endif
#define Root AddBackslash(SourcePath) + "..\.."

[Setup]
AppId={{6C0A5E0B-3C55-4F0B-9D7E-2B7A1F0C9D41}
AppName=QuantDesk
AppVersion={#AppVersion}
AppVerName=QuantDesk {#AppVersion} ({#Variant})
AppPublisher=QuantDesk
DefaultDirName={autopf}\QuantDesk
DefaultGroupName=QuantDesk
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0
OutputDir={#Root}\dist
OutputBaseFilename=QuantDesk-{#AppVersion}-{#Variant}-setup
SetupIconFile={#Root}\packaging\icons\quantdesk.ico
UninstallDisplayIcon={app}\QuantDesk.exe
Compression=lzma2/max
SolidCompression=yes
LZMANumBlockThreads=4
WizardStyle=modern
#if Variant == "cuda"
DiskSpanning=yes
DiskSliceSize=max
#endif

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"
Name: "addtopath"; Description: "Add quantdesk-cli to PATH (command line use)"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
Source: "{#Root}\dist\QuantDesk\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\QuantDesk"; Filename: "{app}\QuantDesk.exe"
Name: "{group}\Uninstall QuantDesk"; Filename: "{uninstallexe}"
Name: "{autodesktop}\QuantDesk"; Filename: "{app}\QuantDesk.exe"; Tasks: desktopicon

[Registry]
Root: HKCU; Subkey: "Environment"; ValueType: expandsz; ValueName: "Path"; ValueData: "{olddata};{app}"; Tasks: addtopath; Check: NeedsAddPath(ExpandConstant('{app}'))

[Run]
Filename: "{app}\QuantDesk.exe"; Description: "{cm:LaunchProgram,QuantDesk}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; Only what the app writes next to itself (Python caches); the models cache and results in
; %LOCALAPPDATA%\QuantDesk are the user's and stay.
Type: filesandordirs; Name: "{app}\_internal\__pycache__"

[Code]
function NeedsAddPath(Dir: string): Boolean;
var
  Path: string;
begin
  if not RegQueryStringValue(HKEY_CURRENT_USER, 'Environment', 'Path', Path) then
  begin
    Result := True;
    exit;
  end;
  Result := Pos(';' + Uppercase(Dir) + ';', ';' + Uppercase(Path) + ';') = 0;
end;
