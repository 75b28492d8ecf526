"""Software updates (issue 16): real wheels built from this project, real venvs side by side in a
temporary directory standing in for /opt/edge-node, the ExecStartPre check run by the system's
Python as the unit runs it.

The wheelhouse (this project's dependencies as wheels) is made once per session by `pip wheel`
(pip's cache makes it quick after the first run); each release is then built offline from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_node import __version__, update
from edge_node.signing import generate_key, load_signer

ROOT = Path(__file__).resolve().parent.parent
SOURCE_PARTS = [
    "edge_node",
    "drivers",
    "simulators",
    "sensors",
    "provisioning",
    "operations",
    "city",
    "systemd",
]


def edge_node_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "edge_node.cli", *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def source_at(version: str, where: Path) -> Path:
    """A copy of this project whose version is `version` (what a later release would be)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for part in SOURCE_PARTS:
        shutil.copytree(ROOT / part, where / part, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, where / name)
    pyproject = where / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(f'version = "{__version__}"', f'version = "{version}"', 1)
    )
    (where / "edge_node" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    return where


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    where = tmp_path_factory.mktemp("keys")
    ops, other = where / "ops.key", where / "other.key"
    return {"ops": ops, "ops_public": generate_key(ops), "other": other, "other_public": generate_key(other)}


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("wheelhouse")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(where), ROOT],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for own in where.glob("edge_node-*.whl"):
        own.unlink()  # each release builds its own
    return where


@pytest.fixture(scope="session")
def releases(tmp_path_factory, wheelhouse, keys) -> dict[str, Path]:
    """Signed releases of this project at 0.1.0 (what runs) and 0.2.0, built offline."""
    made = {}
    for version in (__version__, "0.2.0"):
        where = tmp_path_factory.mktemp(f"release-{version}")
        source = source_at(version, where / "src")
        out = where / "release"
        edge_node_cli(
            "release", "build", "--key", str(keys["ops"]), "--out", str(out), "--source", str(source),
            "--wheelhouse", str(wheelhouse), check=True,
        )  # fmt: skip
        made[version] = out
    return made


@pytest.fixture(scope="session")
def opt(tmp_path_factory, releases, keys) -> Path:
    """/opt/edge-node with 0.1.0 (good, current) and 0.2.0 installed side by side: real venvs."""
    root = tmp_path_factory.mktemp("opt") / "edge-node"
    cut_short = root / "versions" / "0.2.0" / "venv"
    cut_short.mkdir(parents=True)  # a power cut during an earlier install of 0.2.0
    (cut_short / "junk").write_text("half a venv")
    for version in (__version__, "0.2.0"):
        manifest = update.read_manifest(releases[version], [keys["ops_public"]])
        update.verify_files(manifest, releases[version])
        update.install(root, releases[version], manifest)
    update.switch(root, __version__)
    return root


def reset(root: Path) -> None:
    update.switch(root, __version__)
    (root / update.STATE).write_text(json.dumps({"good": __version__}))


def node_config(tmp_path: Path, trusted: str, root: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[node]\nid = "trs-update"\n[broker]\nurl = "mqtt://127.0.0.1:1"\n'
        f'[buffer]\npath = "{tmp_path / "state" / "buffer.db"}"\n'
        f'[remote]\ntrusted_keys = ["{trusted}"]\n[update]\nroot = "{root}"\nconfirm_s = 30\n'
    )
    return path


# -- point 1: the release and what a node refuses -----------------------------------------------


def test_release_manifest_lists_every_wheel_with_its_hash(releases, keys):
    manifest = update.read_manifest(releases["0.2.0"], [keys["ops_public"]])
    names = {f["name"] for f in manifest["files"]}
    assert names == {p.name for p in releases["0.2.0"].glob("*.whl")}
    assert any(n.startswith("edge_node-0.2.0-") for n in names)
    assert any(n.startswith("aiomqtt-") for n in names) and any(n.startswith("cryptography-") for n in names)
    assert manifest["version"] == "0.2.0" and manifest["buffer_schema"] == update.buffer_schema()
    for entry in manifest["files"]:
        assert update.sha256_file(releases["0.2.0"] / entry["name"]) == entry["sha256"]


def _copy(release: Path, where: Path) -> Path:
    shutil.copytree(release, where)
    return where


def test_refusals_each_one_line(tmp_path, releases, keys):
    good = [keys["ops_public"]]
    refused = {}

    def refusal(release: Path, trusted=good, running=__version__, **kw) -> str:
        with pytest.raises(update.UpdateRefused) as err:
            update.verify_release(release, trusted, running, **kw)
        assert "\n" not in str(err.value)
        return str(err.value)

    unsigned = _copy(releases["0.2.0"], tmp_path / "unsigned")
    body = json.loads(json.loads((unsigned / "manifest.json").read_text())["body"])
    (unsigned / "manifest.json").write_text(json.dumps(body))
    refused["unsigned"] = refusal(unsigned)
    assert "unsigned" in refused["unsigned"]

    refused["untrusted"] = refusal(releases["0.2.0"], trusted=[keys["other_public"]])
    assert "untrusted key" in refused["untrusted"]

    altered = _copy(releases["0.2.0"], tmp_path / "altered")
    sealed = json.loads((altered / "manifest.json").read_text())
    sealed["body"] = sealed["body"].replace('"version":"0.2.0"', '"version":"0.2.1"')
    (altered / "manifest.json").write_text(json.dumps(sealed))
    assert "bad signature" in refusal(altered)

    # An attacker's manifest, signed with a key the node does not trust, over a changed wheel.
    forged = _copy(releases["0.2.0"], tmp_path / "forged")
    manifest = update.check_manifest(body)
    (forged / "manifest.json").write_text(json.dumps(load_signer(keys["other"]).seal(manifest)))
    assert "untrusted key" in refusal(forged)

    tampered = _copy(releases["0.2.0"], tmp_path / "tampered")
    wheel = next(tampered.glob("edge_node-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    refused["tampered"] = refusal(tampered)
    assert refused["tampered"].startswith("tampered: edge_node-0.2.0")

    truncated = _copy(releases["0.2.0"], tmp_path / "truncated")
    wheel = next(truncated.glob("aiomqtt-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[:1000])
    assert refusal(truncated).startswith(f"truncated: {wheel.name} is 1000 of ")
    next(truncated.glob("paho_mqtt-*.whl")).unlink()

    assert "older than what runs: 0.2.0 < 0.3.0" in refusal(releases["0.2.0"], running="0.3.0")
    assert "already running" in refusal(releases["0.2.0"], running="0.2.0")
    assert update.verify_release(releases["0.2.0"], good, "0.3.0", rollback=True)["version"] == "0.2.0"


def test_a_release_of_another_buffer_schema_is_refused_both_ways(releases, keys):
    manifest = update.read_manifest(releases["0.2.0"], [keys["ops_public"]])
    other = {**manifest, "buffer_schema": "0123456789abcdef"}
    for kw in ({}, {"rollback": True}):
        with pytest.raises(update.UpdateRefused, match="buffer schema 0123456789abcdef is not this node's"):
            update.check_upgrade(other, "0.1.5" if not kw else "0.9", schema=update.buffer_schema(), **kw)


def test_cli_refuses_with_one_line_and_exit_1(tmp_path, releases, keys, opt):
    reset(opt)
    config = node_config(tmp_path, keys["other_public"], opt)
    result = edge_node_cli("update", "-c", str(config), "install", str(releases["0.2.0"]))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "refused:" in result.stderr and "untrusted key" in result.stderr
    assert update.current_version(opt) == __version__


# -- point 3: side by side, the switch, confirm, crash loop ---------------------------------------


def _venv_listing(version_dir: Path) -> dict[str, int]:
    return {
        str(p.relative_to(version_dir)): p.stat().st_mtime_ns
        for p in version_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_install_side_by_side_switch_and_confirm(tmp_path, releases, keys, opt):
    reset(opt)
    running_before = _venv_listing(opt / "versions" / __version__)
    config = node_config(tmp_path, keys["ops_public"], opt)
    result = edge_node_cli("update", "-c", str(config), "install", str(releases["0.2.0"]))
    assert result.returncode == 0, result.stderr
    assert os.readlink(opt / "current") == "versions/0.2.0"
    # Each version runs from its own venv; the one that ran is untouched.
    for version in (__version__, "0.2.0"):
        shown = subprocess.run(
            [opt / "versions" / version / "venv" / "bin" / "edge-node", "--version"],
            capture_output=True,
            text=True,
        )
        assert shown.stdout.strip() == f"edge-node {version}"
    assert _venv_listing(opt / "versions" / __version__) == running_before
    state = update.status(opt)
    assert state["trial"] == "0.2.0" and state["good"] == __version__
    assert state["installed"] == [__version__, "0.2.0"]
    assert update.confirm(opt, "0.2.0")
    assert update.status(opt)["good"] == "0.2.0" and update.status(opt)["trial"] is None


def run_check(root: Path) -> str:
    """The unit's ExecStartPre, run as the unit runs it: the system's Python, the copied script."""
    python = shutil.which("python3", path="/usr/bin") or sys.executable
    result = subprocess.run(
        [python, "-I", str(root / update.CHECK_SCRIPT), "check", str(root)], capture_output=True, text=True
    )
    assert result.returncode == 0
    return result.stdout.strip() + result.stderr.strip()


def test_crash_loop_switches_back_by_itself(opt):
    reset(opt)
    update.begin_trial(opt, "0.2.0", confirm_s=30, command_id="cmd-crashloop")
    for start in range(1, update.MAX_TRIAL_STARTS + 1):
        assert f"start {start} of" in run_check(opt)
        assert update.current_version(opt) == "0.2.0"
    said = run_check(opt)  # the start after the last one it was allowed
    assert "update_rolled_back: 0.2.0 -> 0.1.0" in said
    assert update.current_version(opt) == __version__
    rolled = update.status(opt)["rolled_back"]
    assert rolled["version"] == "0.2.0" and rolled["id"] == "cmd-crashloop"
    assert rolled["reason"].startswith("update_rolled_back: 3 starts without confirming")
    assert "no update on trial" in run_check(opt)


def test_deadline_passed_switches_back(opt):
    reset(opt)
    update.begin_trial(opt, "0.2.0", confirm_s=30)
    state = json.loads((opt / update.STATE).read_text())
    state["trial"]["deadline"] = 1.0  # the trial outlived its confirm_s (a node off meanwhile)
    (opt / update.STATE).write_text(json.dumps(state))
    assert "rolled back" in run_check(opt) or update.current_version(opt) == __version__
    assert update.current_version(opt) == __version__
    assert "not confirmed before its deadline" in update.status(opt)["rolled_back"]["reason"]


def test_killed_mid_switch_leaves_the_old_version_running(opt):
    """The trial is written before the link moves: a kill between them leaves a trial whose
    version is not current, which the next start abandons; the old version runs on."""
    reset(opt)
    state = update.read_state(opt)
    state["trial"] = {"version": "0.2.0", "previous": __version__, "starts": 0, "deadline": 9e9}
    (opt / update.STATE).write_text(json.dumps(state))
    (opt / ".current.12345").symlink_to("versions/0.2.0")  # the new link made, not yet renamed
    assert "abandoned" in run_check(opt)
    assert update.current_version(opt) == __version__ and update.status(opt)["trial"] is None
    update.switch(opt, "0.2.0")  # a later switch is not confused by the stray link
    assert update.current_version(opt) == "0.2.0"
    (opt / ".current.12345").unlink()


def test_an_install_cut_short_is_redone(opt):
    """`opt` found half a 0.2.0 (no installed.json) and built it again, whole."""
    assert not (opt / "versions" / "0.2.0" / "venv" / "junk").exists()
    assert (opt / "versions" / "0.2.0" / update.INSTALLED).exists()
    shutil.rmtree(opt / "versions" / "0.3.0", ignore_errors=True)
    (opt / "versions" / "0.3.0" / "venv").mkdir(parents=True)
    assert update.status(opt)["installed"] == [__version__, "0.2.0"]  # not a version
    with pytest.raises(update.UpdateRefused, match="not installed"):
        update.switch(opt, "0.3.0")
