<#
.SYNOPSIS
  Cài đặt dịch vụ đồng bộ commune-sync (sync-agent) trên máy tính của xã.
  Installs the commune-sync agent as a Windows service.

.DESCRIPTION
  Chạy lại để cập nhật; -Uninstall để gỡ dịch vụ (dữ liệu được giữ lại).
  Re-run to update; -Uninstall removes the service (the data is kept).

  Steps, each skipped when already done:
    1. a Python virtual environment in <InstallDir>\venv with commune-sync;
    2. WinSW v2.12.0 (WinSW.NET461.exe) as <InstallDir>\sync-agent-service.exe,
       after its SHA-256 matches -WinSWSha256;
    3. the data and log folders, readable only by SYSTEM and Administrators
       (plus -OfficerAccount);
    4. sync-agent init, when -Token is given and the PC is not enrolled yet;
    5. <InstallDir>\sync-agent-service.xml from sync-agent.xml next to this
       script, then the service "sync-agent": installed (start on boot,
       restart on failure) or refreshed, and started.

  Administrator rights are needed for the whole script: creating, changing and
  starting a service (WinSW install/refresh/start, sc.exe failureflag), writing
  under Program Files, and setting ACLs on the folders under ProgramData. The
  script stops at once when not run as Administrator.

  WinSW download and checksum: the district IT downloads once, on a trusted
  machine,
    https://github.com/winsw/winsw/releases/download/v2.12.0/WinSW.NET461.exe
  checks it (Get-FileHash -Algorithm SHA256 .\WinSW.NET461.exe, compared with
  the digest GitHub shows for that release asset), and hands the hash to every
  commune with the file (USB stick), or writes it into $PinnedWinSWSha256
  below. The script never runs a WinSW executable whose SHA-256 differs.

.EXAMPLE
  # Lần đầu / first install (PowerShell chạy với quyền Administrator):
  .\install-service.ps1 -ServerUrl https://sync.tinh.example -Token TOKEN `
      -Package .\commune_sync-0.1.0-py3-none-any.whl -WheelDir .\wheelhouse `
      -WinSWExe .\WinSW.NET461.exe -WinSWSha256 <sha256>

.EXAMPLE
  .\install-service.ps1 -Uninstall
#>
[CmdletBinding()]
param(
    # Thư mục cài đặt / where the venv and WinSW go (admin-writable only).
    [string]$InstallDir = "$env:ProgramFiles\commune-sync",
    # Thư mục dữ liệu / the agent's data directory (queue, keys).
    [string]$DataDir = "$env:ProgramData\commune-sync\agent",
    [string]$LogDir = "$env:ProgramData\commune-sync\logs",
    # Địa chỉ máy chủ / server URL, used by sync-agent init.
    [string]$ServerUrl,
    # Mã đăng ký một lần / one-time enrollment token (syncd enroll or /ui/enroll).
    [string]$Token,
    # CA riêng của tỉnh / a private CA certificate (PEM) for an https server.
    [string]$CaFile,
    # Tên máy / a name for this PC, shown to the operators.
    [string]$Name,
    # Gói cài đặt / wheel file, source folder or package name for pip.
    [string]$Package = "commune-sync",
    # Thư mục wheel ngoại tuyến / offline wheelhouse (pip --no-index --find-links).
    [string]$WheelDir,
    # Python >= 3.11 to build the venv with (default: the py launcher, then python).
    [string]$Python,
    # WinSW.NET461.exe already on this PC (USB stick); otherwise it is downloaded.
    [string]$WinSWExe,
    [string]$WinSWSha256,
    # Windows accounts (officers) that may run sync-agent add/status on the data.
    [string[]]$OfficerAccount = @(),
    # Gỡ dịch vụ / remove the service; data and install folders are kept.
    [switch]$Uninstall
)

Set-StrictMode -Version Latest
$ErrorActionPreference = "Stop"
[Console]::OutputEncoding = [System.Text.Encoding]::UTF8

$ServiceId = "sync-agent"
$WinSWVersion = "v2.12.0"
$WinSWAsset = "WinSW.NET461.exe"
$WinSWUrl = "https://github.com/winsw/winsw/releases/download/$WinSWVersion/$WinSWAsset"
# SHA-256 of WinSW.NET461.exe v2.12.0, filled in by the district IT after
# checking it once (see .DESCRIPTION). Empty: -WinSWSha256 is required.
$PinnedWinSWSha256 = ""

$ServiceExe = Join-Path $InstallDir "$ServiceId-service.exe"
$ServiceXml = Join-Path $InstallDir "$ServiceId-service.xml"
$VenvPython = Join-Path $InstallDir "venv\Scripts\python.exe"
$AgentExe = Join-Path $InstallDir "venv\Scripts\sync-agent.exe"

function Say([string]$Vi, [string]$En) {
    Write-Host "$Vi / $En"
}

function Fail([string]$Vi, [string]$En) {
    Write-Host "LỖI: $Vi / ERROR: $En" -ForegroundColor Red
    exit 1
}

function Invoke-Checked([string]$Exe, [string[]]$Arguments, [string]$Vi, [string]$En) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { Fail "$Vi (mã $LASTEXITCODE)" "$En (exit $LASTEXITCODE)" }
}

function Assert-Admin {
    $identity = [Security.Principal.WindowsIdentity]::GetCurrent()
    $principal = New-Object Security.Principal.WindowsPrincipal($identity)
    if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
        Fail "Hãy mở PowerShell bằng 'Run as administrator' rồi chạy lại." `
             "Run this script from an elevated PowerShell (Run as administrator)."
    }
}

function Get-ServiceOrNull {
    return Get-Service -Name $ServiceId -ErrorAction SilentlyContinue
}

function Stop-AgentService {
    $svc = Get-ServiceOrNull
    if ($null -ne $svc -and $svc.Status -ne "Stopped") {
        Say "Đang dừng dịch vụ $ServiceId (tối đa 90 giây)..." "Stopping $ServiceId (up to 90 s)..."
        Stop-Service -Name $ServiceId
        $svc.WaitForStatus("Stopped", [TimeSpan]::FromSeconds(120))
    }
}

function Uninstall-Agent {
    Stop-AgentService
    if ($null -eq (Get-ServiceOrNull)) {
        Say "Dịch vụ $ServiceId chưa được cài." "Service $ServiceId is not installed."
    } elseif (Test-Path $ServiceExe) {
        Invoke-Checked $ServiceExe @("uninstall") "Không gỡ được dịch vụ" "Could not remove the service"
    } else {
        Invoke-Checked "sc.exe" @("delete", $ServiceId) "Không gỡ được dịch vụ" "Could not remove the service"
    }
    Say "Đã gỡ dịch vụ. Dữ liệu vẫn còn ở $DataDir (có thể còn hồ sơ chưa gửi)." `
        "Service removed. The data stays in $DataDir (it may hold unsent dossiers)."
}

function Find-Python {
    $candidates = @()
    if ($Python) { $candidates += , @($Python) }
    if (Get-Command py.exe -ErrorAction SilentlyContinue) { $candidates += , @("py.exe", "-3") }
    if (Get-Command python.exe -ErrorAction SilentlyContinue) { $candidates += , @("python.exe") }
    foreach ($candidate in $candidates) {
        $exe = $candidate[0]
        $extra = @($candidate | Select-Object -Skip 1)
        $ok = & $exe @extra -c "import sys; print(int(sys.version_info >= (3, 11)))" 2>$null
        if ($LASTEXITCODE -eq 0 -and "$ok".Trim() -eq "1") { return , $candidate }
    }
    Fail "Không tìm thấy Python 3.11 trở lên (cài từ python.org, chọn 'Install for all users')." `
         "Python 3.11 or later not found (install it from python.org, 'Install for all users')."
}

function Install-Package {
    if (-not (Test-Path $VenvPython)) {
        $py = Find-Python
        $extra = @($py | Select-Object -Skip 1)
        Say "Tạo môi trường Python trong $InstallDir\venv..." "Creating the Python environment..."
        Invoke-Checked $py[0] ($extra + @("-m", "venv", (Join-Path $InstallDir "venv"))) `
            "Không tạo được môi trường Python" "Could not create the virtual environment"
    }
    $pipArgs = @("-m", "pip", "install", "--upgrade", "--disable-pip-version-check")
    if ($WheelDir) { $pipArgs += @("--no-index", "--find-links", $WheelDir) }
    Say "Cài đặt/cập nhật commune-sync..." "Installing or updating commune-sync..."
    Invoke-Checked $VenvPython ($pipArgs + @($Package)) `
        "pip không cài được commune-sync" "pip could not install commune-sync"
}

function Install-WinSW {
    $expected = if ($WinSWSha256) { $WinSWSha256 } else { $PinnedWinSWSha256 }
    if (-not $expected) {
        Fail "Thiếu mã SHA-256 của WinSW: dùng -WinSWSha256 (xem phần đầu tệp này)." `
             "The SHA-256 of WinSW is missing: pass -WinSWSha256 (see the top of this file)."
    }
    $expected = $expected.Trim().ToUpperInvariant()
    if ((Test-Path $ServiceExe) -and (Get-FileHash $ServiceExe -Algorithm SHA256).Hash -eq $expected) {
        return
    }
    $source = $WinSWExe
    if (-not $source) {
        $source = Join-Path $env:TEMP $WinSWAsset
        Say "Tải WinSW $WinSWVersion từ $WinSWUrl..." "Downloading WinSW $WinSWVersion..."
        [Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12
        Invoke-WebRequest -Uri $WinSWUrl -OutFile $source -UseBasicParsing
    }
    $actual = (Get-FileHash $source -Algorithm SHA256).Hash
    if ($actual -ne $expected) {
        Fail "WinSW có mã SHA-256 $actual, khác mã mong đợi $expected; không cài." `
             "WinSW's SHA-256 is $actual, not the expected $expected; not installing it."
    }
    Copy-Item -Path $source -Destination $ServiceExe -Force
}

function Protect-Folder([string]$Path, [string]$Rights) {
    # SIDs, not names: group names are translated on a Vietnamese Windows.
    # S-1-5-18 = SYSTEM (the service's account), S-1-5-32-544 = Administrators.
    New-Item -ItemType Directory -Force -Path $Path | Out-Null
    $grants = @("/grant:r", "*S-1-5-18:(OI)(CI)F", "/grant:r", "*S-1-5-32-544:(OI)(CI)F")
    foreach ($account in $OfficerAccount) { $grants += @("/grant:r", "${account}:(OI)(CI)$Rights") }
    Invoke-Checked "icacls.exe" (@($Path, "/inheritance:r") + $grants + @("/Q")) `
        "Không đặt được quyền cho $Path" "Could not set permissions on $Path"
}

function Initialize-Agent {
    if (Test-Path (Join-Path $DataDir "agent.json")) {
        if ($ServerUrl) {
            $current = (Get-Content (Join-Path $DataDir "agent.json") -Raw | ConvertFrom-Json).server_url
            if ($current -ne $ServerUrl) {
                Say "Máy đã đăng ký với $current; địa chỉ mới $ServerUrl KHÔNG được áp dụng (sửa server_url trong agent.json khi dịch vụ đã dừng)." `
                    "Already enrolled with $current; $ServerUrl is NOT applied (edit server_url in agent.json while the service is stopped)."
            }
        }
        return
    }
    if (-not ($ServerUrl -and $Token)) {
        Fail "Máy chưa đăng ký: cần -ServerUrl và -Token (lấy từ huyện/tỉnh)." `
             "This PC is not enrolled: pass -ServerUrl and -Token (from the district)."
    }
    $initArgs = @("init", "--data-dir", $DataDir, "--server", $ServerUrl, "--token", $Token)
    if ($CaFile) { $initArgs += @("--ca-file", $CaFile) }
    if ($Name) { $initArgs += @("--name", $Name) }
    Say "Đăng ký máy với máy chủ..." "Enrolling this PC..."
    Invoke-Checked $AgentExe $initArgs "Đăng ký không thành công" "Enrollment failed"
}

function Write-ServiceXml {
    $template = Join-Path $PSScriptRoot "sync-agent.xml"
    if (-not (Test-Path $template)) {
        Fail "Không thấy $template (đặt cùng thư mục với script)." "$template not found (keep it next to this script)."
    }
    [xml]$doc = Get-Content -Path $template -Raw -Encoding UTF8
    $svc = $doc.service
    if ($svc.id -ne $ServiceId) { Fail "sync-agent.xml có id khác '$ServiceId'." "sync-agent.xml has an id other than '$ServiceId'." }
    $svc.arguments = "-m client.cli run --data-dir `"$DataDir`""
    $svc.workingdirectory = $DataDir
    $svc.logpath = $LogDir
    foreach ($node in $svc.SelectNodes("env")) {
        if ($node.name -eq "SYNC_AGENT_DATA_DIR") { $node.value = $DataDir }
    }
    $doc.Save($ServiceXml)
}

function Install-AgentService {
    if ($null -eq (Get-ServiceOrNull)) {
        Say "Cài dịch vụ $ServiceId (tự chạy khi khởi động máy)..." "Installing service $ServiceId (starts on boot)..."
        Invoke-Checked $ServiceExe @("install") "Không cài được dịch vụ" "Could not install the service"
    } else {
        Say "Cập nhật cấu hình dịch vụ $ServiceId..." "Refreshing service $ServiceId..."
        Invoke-Checked $ServiceExe @("refresh") "Không cập nhật được dịch vụ" "Could not refresh the service"
    }
    # Failure actions also when the process exits non-zero (not only on a crash).
    Invoke-Checked "sc.exe" @("failureflag", $ServiceId, "1") `
        "Không đặt được chế độ khởi động lại" "Could not set the restart-on-failure flag"
    Invoke-Checked $ServiceExe @("start") "Không khởi động được dịch vụ" "Could not start the service"
}

Assert-Admin
if ($Uninstall) {
    Uninstall-Agent
    exit 0
}
New-Item -ItemType Directory -Force -Path $InstallDir | Out-Null
Stop-AgentService  # pip cannot replace files a running service holds open
Install-Package
Install-WinSW
Protect-Folder $DataDir "M"
Protect-Folder $LogDir "RX"
Initialize-Agent
Write-ServiceXml
Install-AgentService
Say "Xong. Kiểm tra: `"$AgentExe`" status --data-dir `"$DataDir`"" `
    "Done. Check with: `"$AgentExe`" status --data-dir `"$DataDir`""
& $AgentExe status --data-dir $DataDir
