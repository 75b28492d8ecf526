"""`edge-node install`: the systemd unit for this node's devices, the service user, the service.

The unit is `systemd/edge-node.service` rendered for this node: `ExecStart=` runs the installed
`edge-node` with this config, `DeviceAllow=` names exactly the configured devices (DESIGN §8) and
`SupplementaryGroups=` only the device groups that exist here (systemd refuses to start a unit
naming a group that does not exist). Under `--root DIR` every file is written below DIR as if DIR
were `/`, and neither `useradd` nor `systemctl` runs.

Checks: `install.unit`, `install.user`, `install.service`.
"""

from __future__ import annotations

import errno
import grp
import importlib.resources
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from edge_node.config import DRIVERS, Config
from sensors.buses import GPIO_CHIP, device_nodes

from .report import Report

SERVICE = "edge-node"
UNIT_NAME = "edge-node.service"
UNIT_DIR = Path("/etc/systemd/system")
SERVICE_USER = "edge-node"
DEVICE_GROUPS = ("i2c", "dialout", "gpio")
TEMPLATE_EXEC = "/usr/bin/edge-node"
PI5_MODEL_FILE = Path("/proc/device-tree/model")


# --- Where files go ----------------------------------------------------------------------------


def under_root(path: str | os.PathLike[str], root: Path | None) -> Path:
    """Where the node's file `path` is written when everything is staged under `root`.

    The one rule of `--root DIR`: an absolute path P is written to DIR/P, as if DIR were `/`;
    without a root, or for a relative path, the path is used as it is. No symlink below DIR is
    followed (OSError): DIR/etc linked to /etc would have a staging run write the real /etc.
    """
    p = Path(path)
    if root is None or not p.is_absolute():
        return p
    staged = Path(root) / p.relative_to(p.anchor)
    below = Path(root)
    for part in staged.relative_to(root).parts:
        below = below / part
        if below.is_symlink():
            raise OSError(errno.ELOOP, f"{below} is a symlink: --root does not follow symlinks")
    return staged


def open_no_follow(path: Path, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """os.open that refuses a symlink as the last component (what a root tool must never follow:
    whoever controls the directory could point it at /etc/shadow). O_NONBLOCK: a FIFO planted
    there does not hang the tool."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{path} is a symlink: not followed") from None
        raise


def put_file(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> str:
    """Make `path` hold `data` with `mode` (and `owner`), touching it only if something differs.

    Returns "written", "unchanged" or "mode fixed". A new content is written to a temporary file
    created with `mode` from the start (a secret is never readable by others, even for a moment),
    then renamed over the old one.
    """
    try:
        fd = open_no_follow(path)
    except FileNotFoundError:
        fd = None
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        fd = None  # a symlink: replaced by the rename below, never followed
    if fd is not None:
        with os.fdopen(fd, "rb") as file:
            st = os.fstat(file.fileno())
            if stat.S_ISREG(st.st_mode) and file.read() == data:
                fixed = False
                if st.st_mode & 0o7777 != mode:
                    os.fchmod(file.fileno(), mode)
                    fixed = True
                if owner is not None and (st.st_uid, st.st_gid) != owner:
                    os.fchown(file.fileno(), *owner)
                    fixed = True
                return "mode fixed" if fixed else "unchanged"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return "written"


def service_ids() -> tuple[int, int] | None:
    """(uid, gid) of the service user when it exists and we may chown to it (we are root)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def existing_groups(names: Iterable[str] = DEVICE_GROUPS) -> list[str]:
    out = []
    for name in names:
        try:
            grp.getgrnam(name)
        except KeyError:
            continue
        out.append(name)
    return out


# --- The unit ----------------------------------------------------------------------------------


def unit_template() -> str:
    """The shipped unit: package data when installed from a wheel, else the source tree's."""
    packaged = importlib.resources.files("provisioning").joinpath(UNIT_NAME)
    if packaged.is_file():
        return packaged.read_text()
    source = Path(__file__).resolve().parent.parent / "systemd" / UNIT_NAME
    return source.read_text()


def edge_node_command() -> str:
    """The absolute path of the `edge-node` command this program was installed with."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "edge-node" and argv0.exists():
        return os.path.abspath(argv0)
    beside = Path(sys.executable).parent / "edge-node"  # a venv's bin/, or /usr/bin for a system pip
    if beside.exists():
        return str(beside)
    found = shutil.which("edge-node")
    if found is None:
        raise FileNotFoundError("cannot find the installed edge-node command (is edge-node installed?)")
    return os.path.abspath(found)


def is_pi5() -> bool:
    try:
        return "Raspberry Pi 5" in PI5_MODEL_FILE.read_text(errors="replace")
    except OSError:
        return False


def configured_devices(config: Config, *, pi5: bool | None = None) -> list[str]:
    """The device nodes the configured sensors open: exactly what `DeviceAllow=` grants."""
    opened = [node for s in config.sensors.values() for node in device_nodes(DRIVERS[s.driver], s.options)]
    devices = [node for node in opened if node != GPIO_CHIP]
    if GPIO_CHIP in opened:
        devices.append(GPIO_CHIP)
        if is_pi5() if pi5 is None else pi5:  # the header's RP1 chip; numbered 4 on older kernels
            devices.append("/dev/gpiochip4")
    return list(dict.fromkeys(devices))


def _quote(word: str) -> str:
    return f'"{word}"' if re.search(r'[\s"\\]', word) else word


def _unit_word(device: str) -> str:
    """A device path fit for one unit line: config validation already refuses the rest; this is
    the last wall before a value from the config becomes systemd directives."""
    if not re.fullmatch(r"/dev/[A-Za-z0-9._:+/-]+", device):
        raise ValueError(
            f"device {device!r} cannot go into DeviceAllow= (only /dev/ paths of plain characters)"
        )
    return device


def render_unit(config: Config, config_path: Path, *, command: str | None = None) -> str:
    """The shipped unit for this node: its command and config, its devices, its groups."""
    command = command or edge_node_command()
    for what, value in (("the edge-node command", command), ("the config path", str(config_path))):
        if not value.isprintable():  # a newline ends a unit line even inside quotes
            raise ValueError(f"{what} {value!r} cannot go into ExecStart= (control characters)")
    exec_start = f"ExecStart={_quote(command)} run -c {_quote(str(config_path))}"
    groups = existing_groups()
    out = []
    for line in unit_template().splitlines():
        if line.startswith("ExecStart="):
            out.append(exec_start)
        elif line.startswith("DeviceAllow="):
            continue  # the template's defaults; ours follow DevicePolicy=
        elif line.startswith("SupplementaryGroups="):
            if groups:
                out.append(f"SupplementaryGroups={' '.join(groups)}")
        elif line.startswith("DevicePolicy="):
            out.append(line)
            out.extend(f"DeviceAllow={_unit_word(device)} rw" for device in configured_devices(config))
        else:
            out.append(line)
    header = f"# Rendered by `edge-node install` for node {config.node.id} from {config_path}."
    return header + "\n" + "\n".join(out) + "\n"


def verify_unit(text: str) -> str | None:
    """`systemd-analyze verify` on the unit; None when it passes (or is not installed), else why."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return None
    with tempfile.TemporaryDirectory(prefix="edge-node-unit-") as tmp:
        path = Path(tmp) / UNIT_NAME
        path.write_text(text)
        result = subprocess.run(
            [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
    complaints = [line for line in result.stderr.splitlines() if UNIT_NAME in line]
    if result.returncode != 0 or complaints:
        lines = complaints or result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        return "systemd-analyze verify: " + "; ".join(line.strip() for line in lines[:3])
    return None


# --- systemctl ---------------------------------------------------------------------------------


def systemd_running() -> bool:
    """sd_booted(): is systemd the init system here?"""
    return Path("/run/systemd/system").is_dir()


def systemctl(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=timeout, check=False)


def service_state() -> str:
    """`systemctl is-active edge-node`, or "unknown" when systemd is not there to ask."""
    if shutil.which("systemctl") is None or not systemd_running():
        return "unknown"
    result = systemctl("is-active", SERVICE, timeout=15)
    return result.stdout.strip() or "unknown"


def _ensure_user() -> str:
    """Create the service user (system, no login, no home) or add it to missing device groups."""
    groups = existing_groups()
    try:
        pwd.getpwnam(SERVICE_USER)
        exists = True
    except KeyError:
        exists = False
    if not exists:
        command = [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/var/lib/edge-node",
            "--shell",
            "/usr/sbin/nologin",
        ]
        if groups:
            command += ["--groups", ",".join(groups)]
        result = subprocess.run(
            [*command, SERVICE_USER], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"useradd failed: {result.stderr.strip() or result.returncode}")
        return f"created system user {SERVICE_USER}" + (f" in {', '.join(groups)}" if groups else "")
    member_of = {g.gr_name for g in grp.getgrall() if SERVICE_USER in g.gr_mem}
    missing = [g for g in groups if g not in member_of]
    if missing:
        result = subprocess.run(
            ["usermod", "--append", "--groups", ",".join(missing), SERVICE_USER],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"usermod failed: {result.stderr.strip() or result.returncode}")
        return f"user {SERVICE_USER} exists; added to {', '.join(missing)}"
    return f"user {SERVICE_USER} exists" + (f" in {', '.join(groups)}" if groups else "")


def grant_files(config: Config, config_path: Path) -> list[str]:
    """Give the service user what it reads: its secrets (owner, 0600), the config (group, 0640)
    and the config directory (group, 0750). Returns the files changed."""
    ids = service_ids()
    if ids is None:
        return []
    uid, gid = ids
    changed = []
    wanted: list[tuple[Path, int, int, int]] = [(config_path, 0, gid, 0o640)]
    if config_path.parent.name == SERVICE:  # /etc/edge-node: ours alone
        wanted.append((config_path.parent, 0, gid, 0o750))
    for secret in (config.broker.password_file, config.broker.client_key):
        if secret is not None:
            wanted.append((secret, uid, gid, 0o600))
    for path, owner, group, mode in wanted:
        fd = open_no_follow(path)  # by descriptor from here: the name cannot be swapped meanwhile
        try:
            st = os.fstat(fd)
            if not (stat.S_ISREG(st.st_mode) or (path == config_path.parent and stat.S_ISDIR(st.st_mode))):
                raise OSError(errno.EINVAL, f"{path} is not a regular file: not given to {SERVICE_USER}")
            if (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (owner, group, mode):
                os.fchown(fd, owner, group)
                os.fchmod(fd, mode)
                changed.append(str(path))
        finally:
            os.close(fd)
    return changed


# --- The step ----------------------------------------------------------------------------------


def install(
    config: Config, report: Report, *, root: Path | None, config_path: Path, changed: bool = False
) -> None:
    """Install (or, under `root`, stage) the unit, the service user and the running service.

    `config` is the node's config as readable here (under `root`, its files point into it);
    `config_path` is the config's real path on the node, written into `ExecStart=`. `changed`
    says the config or secrets changed, so a running service must restart to read them.
    """
    unit_path = under_root(UNIT_DIR / UNIT_NAME, root)
    unit_changed = False
    with report.step("install.unit") as outcome:
        text = render_unit(config, config_path)
        problem = verify_unit(text)
        if problem is not None:
            outcome["detail"] = problem
        else:
            state = put_file(unit_path, text.encode(), 0o644)
            unit_changed = state == "written"
            devices = configured_devices(config)
            outcome.update(
                passed=True,
                detail=f"{unit_path} {state}; DeviceAllow: {', '.join(devices) or 'none (simulated)'}",
                measured={"path": str(unit_path), "devices": devices, "state": state},
            )

    with report.step("install.user") as outcome:
        if root is not None:
            outcome.update(passed=True, detail=f"staged under {root}; useradd skipped")
        elif os.geteuid() != 0:
            outcome["detail"] = "must run as root to create the service user"
        else:
            detail = _ensure_user()
            granted = grant_files(config, config_path)
            if granted:
                detail += f"; gave it {', '.join(granted)}"
            outcome.update(passed=True, detail=detail)

    with report.step("install.service") as outcome:
        if root is not None:
            outcome.update(passed=True, detail=f"staged under {root}; systemctl skipped")
        elif shutil.which("systemctl") is None or not systemd_running():
            outcome["detail"] = "systemd is not running here (no /run/systemd/system); cannot start"
        else:
            outcome.update(_start_service(restart=unit_changed or changed))


def _start_service(*, restart: bool) -> dict:
    steps = []
    for args in (("daemon-reload",), ("enable", SERVICE)):
        result = systemctl(*args)
        if result.returncode != 0:
            return {"detail": f"systemctl {' '.join(args)}: {result.stderr.strip()}"}
    state = service_state()
    if state != "active":
        action = ("start", SERVICE)
        steps.append("started")
    elif restart:
        action = ("restart", SERVICE)
        steps.append("restarted (config changed)")
    else:
        action = None
        steps.append("running, unchanged")
    if action is not None:
        result = systemctl(*action)  # Type=notify: returns once the daemon said READY (or failed)
        if result.returncode != 0:
            return {"detail": f"systemctl {' '.join(action)} failed; see journalctl -u {SERVICE}"}
    state = service_state()
    if state != "active":
        return {"detail": f"{SERVICE} is {state}; see journalctl -u {SERVICE}", "measured": {"state": state}}
    return {"passed": True, "detail": f"{SERVICE} enabled, {steps[0]}, active", "measured": {"state": state}}
