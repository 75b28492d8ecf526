"""Software updates (issue 16): real wheels built from this project, real venvs side by side in a
temporary directory standing in for /opt/edge-node, the ExecStartPre check run by the system's
Python as the unit runs it.

The wheelhouse (this project's dependencies as wheels) is made once per session by `pip wheel`
(pip's cache makes it quick after the first run); each release is then built offline from it."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paho.mqtt.publish as publish
import pytest

from edge_node import __version__, update
from edge_node.signing import generate_key, load_signer

from .conftest import PREFIX, gaps, start_daemon, write_config
from .release_server import ReleaseServer

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


def source_at(version: str, where: Path, *, bug: tuple[str, str, str] | None = None) -> Path:
    """A copy of this project whose version is `version` (what a later release would be); `bug`
    (file, text, replacement) makes it a release that starts and then fails."""
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
    if bug:
        path = where / bug[0]
        assert bug[1] in path.read_text()
        path.write_text(path.read_text().replace(bug[1], bug[2], 1))
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
    """Signed releases of this project, built offline: 0.1.0 (what runs), 0.2.0, and 0.3.0 with a
    bug that keeps it from the broker (it starts, then fails its health check)."""
    bad = ("edge_node/broker_connection.py", "port=broker.port,", "port=broker.port + 1,")

    def build(version: str) -> Path:
        where = tmp_path_factory.mktemp(f"release-{version}")
        source = source_at(version, where / "src", bug=bad if version == "0.3.0" else None)
        out = where / "release"
        edge_node_cli(
            "release", "build", "--key", str(keys["ops"]), "--out", str(out), "--source", str(source),
            "--wheelhouse", str(wheelhouse), check=True,
        )  # fmt: skip
        return out

    versions = (__version__, "0.2.0", "0.3.0")
    with ThreadPoolExecutor(len(versions)) as pool:  # three pip processes: the session's time
        return dict(zip(versions, pool.map(build, versions), strict=True))


@pytest.fixture(scope="session")
def opt(tmp_path_factory, releases, keys) -> Path:
    """/opt/edge-node with 0.1.0 (good, current) and 0.2.0 installed side by side: real venvs."""
    root = tmp_path_factory.mktemp("opt") / "edge-node"
    cut_short = root / "versions" / "0.2.0" / "venv"
    cut_short.mkdir(parents=True)  # a power cut during an earlier install of 0.2.0
    (cut_short / "junk").write_text("half a venv")

    def first_install() -> subprocess.CompletedProcess:  # as a technician sets a node up
        config = node_config(tmp_path_factory.mktemp("first"), keys["ops_public"], root)
        return edge_node_cli("update", "-c", str(config), "install", str(releases[__version__]))

    def install() -> None:
        manifest = update.read_manifest(releases["0.2.0"], [keys["ops_public"]])
        update.verify_files(manifest, releases["0.2.0"])
        update.install(root, releases["0.2.0"], manifest)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.submit(first_install), pool.submit(install)
        second.result()
        assert first.result().returncode == 0, first.result().stderr
    assert "installed as the first version" in first.result().stdout
    assert update.current_version(root) == __version__ and update.read_state(root)["good"] == __version__
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


def test_the_transfer_holds_max_kbps_and_free_space_is_checked_first(tmp_path, releases, keys):
    from edge_node.updater import Transfer, _free_space_problem

    server = ReleaseServer(releases["0.2.0"])
    manifest = update.read_manifest(releases["0.2.0"], [keys["ops_public"]])
    entry = min((f for f in manifest["files"] if f["size"] > 40_000), key=lambda f: f["size"])
    try:
        transfer = Transfer(server.url, tmp_path, max_kbps=200, cancel=threading.Event())  # 25 kB/s
        started = time.monotonic()
        transfer.file(entry["name"], entry["size"])
        took = time.monotonic() - started
    finally:
        server.close()
    assert update.sha256_file(tmp_path / entry["name"]) == entry["sha256"]
    assert took >= entry["size"] / 25_000 * 0.9  # never faster than the limit (a floor: load only slows)
    huge = {"files": [{**entry, "size": 10**15}]}
    problem = _free_space_problem(huge, tmp_path, tmp_path / "opt")
    assert problem is not None and problem.startswith("not enough free space: ") and "MB free" in problem
    assert _free_space_problem(manifest, tmp_path, tmp_path / "opt") is None


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


# -- over the air: a node run as systemd runs it, a release served over HTTP, commands over MQTT ---


class Unit:
    """What systemd does with edge-node.service here: ExecStartPre (the update check, with the
    system's Python), ExecStart from `current`, Restart=on-failure."""

    def __init__(self, root: Path, config: Path, log: Path):
        self.root, self.config, self.log = root, config, log
        self.proc: subprocess.Popen | None = None
        self.exits: list[int] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        with open(self.log, "ab") as log:
            while not self.stopping:
                log.write(f"--- ExecStartPre: {run_check(self.root)}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    [self.root / "current" / "venv" / "bin" / "edge-node", "run", "-c", self.config],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: killed whole, as systemd kills a cgroup
                )
                code = self.proc.wait()
                self.exits.append(code)
                if self.stopping or code == 0:
                    return
                time.sleep(0.5)  # RestartSec

    def kill(self) -> None:
        """SIGKILL to the unit's processes (the daemon and a pip it runs), as a power cut would."""
        os.killpg(self.proc.pid, 9)

    def stop(self) -> None:
        """Stop the unit for good: a start racing this one is stopped too (no process outlives it)."""
        self.stopping = True
        deadline = time.monotonic() + 30
        while self.thread.is_alive() and time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
            self.thread.join(1)
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


def node_root(tmp_path: Path, opt: Path) -> Path:
    """A node's own /opt/edge-node running 0.1.0. Its 0.1.0 is the session's install, linked (a
    version's directory is only ever read once installed; a venv cannot be copied elsewhere)."""
    root = tmp_path / "opt" / "edge-node"
    (root / "versions").mkdir(parents=True)
    (root / "versions" / __version__).symlink_to(opt / "versions" / __version__)
    shutil.copy(opt / update.CHECK_SCRIPT, root / update.CHECK_SCRIPT)  # as update.install leaves it
    update.switch(root, __version__)
    return root


def ota_config(tmp_path: Path, url: str, keys, root: Path, *, node_id="trs-ota", confirm_s=8, max_kbps=0):
    config = write_config(tmp_path, url, node_id=node_id)
    with open(config, "a") as file:
        file.write(
            f'\n[remote]\ntrusted_keys = ["{keys["ops_public"]}"]\n'
            f'[update]\nroot = "{root}"\nconfirm_s = {confirm_s}\nmax_kbps = {max_kbps}\n'
        )
    return config


def send_update(broker, keys, version: str, url: str, node: str = "trs-ota", **args) -> str:
    now = datetime.datetime.now(datetime.UTC)
    doc = {
        "cmd": "update",
        "args": {"version": version, "url": url, **args},
        "node": node,
        "id": uuid.uuid4().hex,
        "issued": now.isoformat(),
        "expires": (now + datetime.timedelta(minutes=10)).isoformat(),
    }
    body = json.dumps(load_signer(keys["ops"]).seal(doc))
    publish.single(f"{PREFIX}/{node}/cmd/update", body, qos=1, hostname="127.0.0.1", port=broker.port)
    return doc["id"]


def update_replies(rec, command_id: str) -> list[dict]:
    return [r for r in rec.payloads("/cmd/update/reply") if r.get("id") == command_id]


def wait_update(rec, command_id: str, state: str, timeout: float = 90) -> dict:
    rec.wait_for(
        lambda: any(r.get("state") == state for r in update_replies(rec, command_id)),
        timeout=timeout,
        what=f"update {state} ({[r.get('state') for r in update_replies(rec, command_id)]})",
    )
    return next(r for r in update_replies(rec, command_id) if r.get("state") == state)


def online_versions(rec, node="trs-ota") -> list[str]:
    return [s.get("version") for s in rec.payloads(f"{node}/status") if s.get("state") == "online"]


def wait_listening(rec, broker, node="trs-ota", timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answered = len(rec.payloads(f"{node}/cmd/ping/reply"))
        publish.single(f"{PREFIX}/{node}/cmd/ping", b"", qos=1, hostname="127.0.0.1", port=broker.port)
        try:
            rec.wait_for(lambda n=answered: len(rec.payloads(f"{node}/cmd/ping/reply")) > n, 1, "pong")
            return
        except AssertionError:
            continue
    raise AssertionError(f"{node} never answered a ping")


@pytest.fixture
def units():
    started: list[Unit] = []
    yield started
    for unit in started:
        unit.stop()


def node_seqs(rec, node: str) -> set[int]:
    with rec.cond:
        batches = [json.loads(p) for t, p, _ in rec.messages if t.startswith(f"{PREFIX}/{node}/reading/")]
    return {r["seq"] for batch in batches for r in batch["readings"]}


SOAK = os.environ.get("EDGE_NODE_SOAK") == "1"
STAGED_NODES = 20 if SOAK else 2


@pytest.mark.soak
@pytest.mark.timeout(1500 if SOAK else 300)  # 20 nodes each building a venv on a 2-core box
def test_a_release_published_in_stages_over_a_dropped_link_is_installed_and_confirmed(
    tmp_path, broker, recorder_factory, releases, keys, units, opt
):
    """`edge-node release publish --stages 1,100%` (1,10%,100% over 20 nodes with
    EDGE_NODE_SOAK=1): the first node (whose link drops 20 kB into the project's wheel, resumed
    with a Range request) confirms and soaks, then the rest."""
    rec = recorder_factory(broker.port)
    server = ReleaseServer(releases["0.2.0"])
    wheel = next(releases["0.2.0"].glob("edge_node-*.whl")).name
    server.drop_after[wheel] = 20_000
    nodes = [f"trs-ota-{i:02d}" for i in range(STAGED_NODES)]
    roots = {}
    for node in nodes:
        where = tmp_path / node
        where.mkdir()
        roots[node] = node_root(where, opt)
        config = ota_config(where, broker.url, keys, roots[node], node_id=node)
        units.append(Unit(roots[node], config, where / "node.log"))
    try:
        for node in nodes:
            wait_listening(rec, broker, node, timeout=60)
        published = edge_node_cli(
            "release", "publish", "--release", str(releases["0.2.0"]), "--url", server.url,
            "--broker", broker.url, "--key", str(keys["ops"]), "--nodes", "trs-ota-*",
            "--stages", "1,10%,100%" if SOAK else "1,100%", "--soak", "2", "--listen", "1", "--json",
        )  # fmt: skip
    finally:
        server.close()
    assert published.returncode == 0, published.stderr + published.stdout
    report = json.loads(published.stdout)
    assert sorted(report["changed"]) == nodes and report["failed"] == [] and report["pending"] == []
    stages = {r["node"]: r["stage"] for r in report["nodes"]}
    expected = [1] + [2] * (len(nodes) - 1) if not SOAK else [1, 2] + [3] * (len(nodes) - 2)
    assert sorted(stages.values()) == expected
    assert (wheel, "bytes=20000-") in server.requests  # resumed where the link dropped
    for node in nodes:
        assert (
            update.current_version(roots[node]) == "0.2.0" and update.status(roots[node])["good"] == "0.2.0"
        )
        assert online_versions(rec, node)[0] == __version__
    # What each node runs now, as the fleet view sees it (retained statuses, heartbeats).
    fleet = edge_node_cli("fleet", "--broker", broker.url, "--json", "--listen", "2.5")
    rows = {r["node"]: r for r in json.loads(fleet.stdout)}
    for node in nodes:
        assert rows[node]["version"] == "0.2.0" and rows[node]["state"] == "online", rows[node]
        assert rows[node]["update"] == "confirmed 0.2.0", rows[node]
    seq = max(node_seqs(rec, nodes[-1]))
    rec.wait_for(lambda: max(node_seqs(rec, nodes[-1])) >= seq + 3, what="readings from the new version")
    for node in nodes:
        assert gaps(node_seqs(rec, node)) == [], node
    assert rec.invalid == []
    assert all(unit.exits == [75] for unit in units)  # one restart each, into the new version


def test_a_release_failing_its_health_check_is_rolled_back_by_the_node(
    tmp_path, broker, recorder_factory, releases, keys, units, opt
):
    rec = recorder_factory(broker.port)
    root = node_root(tmp_path, opt)
    server = ReleaseServer(releases["0.3.0"])
    try:
        units.append(
            Unit(root, ota_config(tmp_path, broker.url, keys, root, confirm_s=6), tmp_path / "node.log")
        )
        wait_listening(rec, broker)
        command_id = send_update(broker, keys, "0.3.0", server.url)
        wait_update(rec, command_id, "switching")
        rolled = wait_update(rec, command_id, "rolled_back")
    finally:
        server.close()
    assert not rolled["ok"] and rolled["version"] == __version__
    assert rolled["error"].startswith(
        "update_rolled_back: not healthy within 6 s: not connected to the broker"
    )
    assert update.current_version(root) == __version__ and update.status(root)["good"] == __version__
    rec.wait_for(lambda: online_versions(rec)[-1:] == [__version__] and len(online_versions(rec)) >= 2,
                 what="online again on the old version")  # fmt: skip
    seq = max(rec.seqs())
    rec.wait_seq(seq + 3)
    assert gaps(rec.seqs()) == [] and rec.invalid == []
    # The fleet view shows the version each node runs and its last update's verdict.
    fleet = edge_node_cli("fleet", "--broker", broker.url, "--json", "--listen", "2.5")
    row = next(r for r in json.loads(fleet.stdout) if r["node"] == "trs-ota")
    assert row["version"] == __version__ and row["state"] == "online"
    assert row["update"].startswith("rolled_back 0.3.0: update_rolled_back: not healthy within 6 s")


def test_a_node_killed_mid_install_resumes_and_confirms(
    tmp_path, broker, recorder_factory, releases, keys, units, opt
):
    """Killed (the daemon and its pip, as a power cut) while it builds the new venv: the next
    start finds the job and the fetched files, fetches nothing again, rebuilds the venv whole,
    switches and confirms; the old version ran until the switch."""
    rec = recorder_factory(broker.port)
    root = node_root(tmp_path, opt)
    server = ReleaseServer(releases["0.2.0"])
    try:
        units.append(Unit(root, ota_config(tmp_path, broker.url, keys, root), tmp_path / "node.log"))
        wait_listening(rec, broker)
        command_id = send_update(broker, keys, "0.2.0", server.url)
        building = root / "versions" / "0.2.0"
        deadline = time.monotonic() + 60
        while not ((building / "venv").exists() and not (building / update.INSTALLED).exists()):
            assert time.monotonic() < deadline, "the install never started"
            time.sleep(0.05)
        units[0].kill()
        confirmed = wait_update(rec, command_id, "confirmed")
    finally:
        server.close()
    assert confirmed["version"] == "0.2.0" and update.current_version(root) == "0.2.0"
    assert units[0].exits == [-9, 75]
    wheels = [name for name, _ in server.requests if name.endswith(".whl")]
    assert len(wheels) == len(set(wheels))  # no wheel fetched twice: only the manifest, checked again
    seq = max(rec.seqs())
    rec.wait_seq(seq + 3)
    assert gaps(rec.seqs()) == [] and rec.invalid == []


def test_tampered_and_unsigned_releases_are_refused_while_the_node_samples_on(
    tmp_path, broker, recorder_factory, releases, keys, daemons
):
    """No venv needed: the node refuses before it installs anything (its root stays empty)."""
    rec = recorder_factory(broker.port)
    root = tmp_path / "opt"
    daemons.append(start_daemon(ota_config(tmp_path, broker.url, keys, root)))
    wait_listening(rec, broker)
    tampered = ReleaseServer(releases["0.2.0"])
    tampered.corrupt.add(next(releases["0.2.0"].glob("aiomqtt-*.whl")).name)  # a byte changed on the way
    unsigned_dir = shutil.copytree(releases["0.2.0"], tmp_path / "unsigned")
    body = json.loads(json.loads((unsigned_dir / "manifest.json").read_text())["body"])
    (unsigned_dir / "manifest.json").write_text(json.dumps(body))
    unsigned = ReleaseServer(unsigned_dir)
    try:
        seq = max(rec.seqs(), default=0)
        first = send_update(broker, keys, "0.2.0", tampered.url)
        refused = wait_update(rec, first, "refused")
        assert refused["error"].startswith("cmd/update: tampered: aiomqtt-")
        second = send_update(broker, keys, "0.2.0", unsigned.url)
        assert "unsigned" in wait_update(rec, second, "refused")["error"]
    finally:
        tampered.close()
        unsigned.close()
    assert not (root / "versions").exists() or not any((root / "versions").iterdir())
    assert not (tmp_path / "state" / "update").exists() or not any((tmp_path / "state" / "update").iterdir())
    rec.wait_seq(seq + 3)  # sampling and forwarding went on throughout
    assert gaps(rec.seqs()) == [] and rec.invalid == []
