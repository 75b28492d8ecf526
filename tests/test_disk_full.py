"""The card fills up under the buffer: sampling goes on into memory, the heartbeat reports the
buffer's fault, and when space returns everything held is stored and delivered (issue 6).
Needs a small file system of its own: a tmpfs, mounted when the tests run as root."""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import gaps, start_daemon, write_config


@pytest.fixture
def small_fs(tmp_path):
    mount = tmp_path / "card"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
        ).returncode
    ):
        pytest.skip("needs root and mount(8) for a small file system")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_reported_survived_and_recovered_from(
    small_fs, tmp_path, broker, recorder_factory, daemons
):
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url)
    config.write_text(config.read_text().replace(str(tmp_path / "state"), str(small_fs)))
    proc = start_daemon(config)
    daemons.append(proc)
    rec.wait_seq(4)

    ballast = small_fs / "ballast"
    with open(ballast, "wb") as f:  # fill the card to the last byte
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    rec.wait_for(
        lambda: any("buffer" in h for h in rec.payloads("/heartbeat")),
        timeout=20,
        what="the buffer's fault in a heartbeat",
    )
    fault = next(h["buffer"] for h in rec.payloads("/heartbeat") if "buffer" in h)
    assert fault["state"] == "fault" and "full" in fault["error"]
    assert proc.poll() is None, "a full disk never kills the daemon"

    ballast.unlink()  # space returns
    rec.wait_for(lambda: "buffer" not in rec.payloads("/heartbeat")[-1], timeout=30, what="recovery")
    top = max(rec.seqs())
    rec.wait_seq(top + 4, timeout=30)
    seqs = rec.seqs()
    assert min(seqs) == 1 and gaps(seqs) == []
    assert rec.payloads("/heartbeat")[-1]["dropped"] == 0, "the in-memory overflow held everything"
    assert rec.invalid == []
