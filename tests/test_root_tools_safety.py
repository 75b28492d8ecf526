"""Issue 11's smaller items: what runs as root follows no symlink, a config value cannot break
the unit file, quarantined buffers do not pile up, and `status` reads a buffer the service user
controls without running its schema's unsafe SQL."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from edge_node.config import ConfigError, parse_config
from edge_node.store import Store
from provisioning import install
from provisioning.report import Check, Report
from provisioning.status import read_buffer

KEEP_QUARANTINED = 3  # edge_node.store's, written out: the test holds the number

SDS011_CONFIG = (
    '[node]\nid = "trs-0001"\n[broker]\nurl = "mqtt://b.example"\n[sensors.pm]\ndriver = "sds011"\n'
)


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    victim.chmod(0o600)
    return victim


def test_put_file_replaces_a_symlink_and_never_writes_or_chmods_through_it(tmp_path):
    victim = _victim(tmp_path)
    link = tmp_path / "etc" / "secret"
    link.parent.mkdir()
    link.symlink_to(victim)
    assert install.put_file(link, b"new\n", 0o640) == "written"
    assert not link.is_symlink() and link.read_bytes() == b"new\n"
    assert victim.read_text() == "root:secret\n" and victim.stat().st_mode & 0o777 == 0o600
    link.unlink()
    link.symlink_to(victim)  # the same content as the target: still not chmodded through the link
    install.put_file(link, b"root:secret\n", 0o644)
    assert victim.stat().st_mode & 0o777 == 0o600 and not link.is_symlink()


def test_grant_files_refuses_a_symlinked_secret(tmp_path, monkeypatch):
    victim = _victim(tmp_path)
    etc = tmp_path / "edge-node"
    etc.mkdir()
    (etc / "config.toml").write_text(SDS011_CONFIG)
    (etc / "secret").symlink_to(victim)
    config = parse_config(
        '[node]\nid = "n1"\n[broker]\nurl = "mqtts://b.example"\nusername = "n1"\npassword_file = "secret"\n',
        base_dir=etc,
    )
    monkeypatch.setattr(install, "service_ids", lambda: (os.getuid() + 4242, os.getgid() + 4242))
    with pytest.raises(OSError, match="is a symlink: not followed"):
        install.grant_files(config, etc / "config.toml")
    st = victim.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (os.getuid(), 0o600)


def test_report_write_does_not_follow_a_planted_symlink(tmp_path):
    victim = _victim(tmp_path)
    link = tmp_path / "trs-0042.json"
    link.symlink_to(victim)
    report = Report(node="trs-0042", config_hash="x", checks=[Check("a", "PASS", "fine")])
    with pytest.raises(OSError, match="is a symlink"):
        report.write(link)
    assert victim.read_text() == "root:secret\n"
    report.write(tmp_path / "report.json")
    assert '"result": "PASS"' in (tmp_path / "report.json").read_text()


def test_root_staging_does_not_follow_a_symlink_below_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").symlink_to(tmp_path / "real-etc")
    with pytest.raises(OSError, match="is a symlink: --root does not follow symlinks"):
        install.under_root("/etc/edge-node/config.toml", root)
    assert install.under_root("/var/lib/edge-node/buffer.db", root) == root / "var/lib/edge-node/buffer.db"


@pytest.mark.parametrize(
    "port", ["/dev/ttyUSB0\nExecStartPre=/bin/sh -c id", "/dev/tty USB0", "spy:///dev/x\x1b"]
)
def test_a_serial_port_that_would_break_the_unit_is_a_config_error(port):
    text = SDS011_CONFIG + 'port = "' + port.replace("\n", "\\n").replace("\x1b", "\\u001b") + '"\n'
    with pytest.raises(ConfigError) as raised:
        parse_config(text, source="config.toml")
    assert str(raised.value).startswith("config.toml: sensors.pm.port: must not contain spaces or control")


def test_the_unit_renderer_refuses_a_device_that_is_not_a_plain_path():
    assert install._unit_word("/dev/ttyAMA0") == "/dev/ttyAMA0"
    with pytest.raises(ValueError, match="cannot go into DeviceAllow="):
        install._unit_word("/dev/tty\nExecStartPre=/bin/sh")
    config = parse_config(SDS011_CONFIG.replace("sds011", "bme280") + 'bus = "sim"\n')
    with pytest.raises(ValueError, match="cannot go into ExecStart="):
        install.render_unit(config, Path("/etc/edge-node/c.toml\nExecStartPre=/bin/sh"), command="/usr/bin/x")


def test_quarantined_buffers_are_pruned_to_the_newest_few(tmp_path):
    for day in range(1, 7):  # six old quarantined buffers, with their WAL files
        for suffix in ("", "-wal"):
            (tmp_path / f"buffer.db.corrupt-202601{day:02d}T000000{suffix}").write_bytes(b"old")
    (tmp_path / "buffer.db").write_bytes(b"this is not a database" * 100)
    store = Store(tmp_path / "buffer.db", max_rows=1000, max_bytes=10**8, sync_interval_s=1)
    store.open()
    try:
        kept = sorted(p.name for p in tmp_path.glob("buffer.db.corrupt-*") if not p.name.endswith("-wal"))
        assert len(kept) == KEEP_QUARANTINED and kept[-1] == store.moved_aside.name  # the newest kept
        assert kept[:-1] == [f"buffer.db.corrupt-2026010{d}T000000" for d in (5, 6)]
        assert not (tmp_path / "buffer.db.corrupt-20260101T000000-wal").exists()
    finally:
        store.close()


def test_status_reads_a_buffer_without_trusting_its_schema(tmp_path):
    """A buffer is the service user's file; `status` runs as root. With trusted_schema=OFF a
    view or trigger planted there cannot reach unsafe SQL (here: a virtual table)."""
    path = tmp_path / "buffer.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE VIRTUAL TABLE planted USING fts5(x); INSERT INTO planted VALUES ('x');"
            "CREATE VIEW readings AS"
            " SELECT rowid AS seq, 0.0 AS wall, 's' AS sensor, '{}' AS body FROM planted;"
            "CREATE TABLE meta (key TEXT, value);"
        )
    db.close()
    out = read_buffer(path, time.time())
    assert "unsafe use of virtual table" in out.get("error", ""), out
