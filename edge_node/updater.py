"""The daemon's side of a software update (issue 16): the signed `update` command, the transfer,
the install, the switch, and the new version's confirmation. The files and the switch are
edge_node/update.py's; this module is imported only when an update is asked for or under way.

Transfer: HTTP(S) from the URL in the signed command (the city serves the release directory
with any web server that honours Range requests). Each file is fetched in chunks into
`{state dir}/update/<version>/`, which a dropped link or a reboot leaves in place: the next try
asks for the rest (`Range: bytes=N-`). The rate is held under `update.max_kbps`, free space is
checked before the first byte, and the whole runs in a thread, so sampling and forwarding go on.
A file whose SHA-256 is wrong once whole is fetched again from its start once (a power cut can
leave a tail unwritten); wrong twice, the release is refused as tampered.

Replies on `cmd/update/reply`, with the command's id: `applying` (at once: fetching), then `switching`
(installed; the node restarts into it), then `confirmed` from the new version, or a refusal
(`refused`) or `rolled_back` (`update_rolled_back: <reason>`), the latter from whichever
version runs next, once it is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import __version__, update
from .commands import CommandRefused

log = logging.getLogger(__name__)

JOB_FILE = "update-job.json"  # the update under way, so a restart resumes it
DOWNLOADS = "update"
CHUNK = 16 * 1024
MAX_MANIFEST_BYTES = 64 * 1024
RETRY_MAX_S = 30.0
HTTP_TIMEOUT_S = 20.0
VENV_FACTOR = 4  # room for the venv: the unpacked wheels take about this many times their size
RESTART_EXIT = 75  # EX_TEMPFAIL: systemd's Restart=on-failure starts the new version
CONFIRM_POLL_S = 0.5

_updater: Updater | None = None
restart_requested = False


def for_remote(remote) -> Updater:
    global _updater
    if _updater is None or _updater.remote is not remote:
        _updater = Updater(remote)
    return _updater


def state_present(config) -> bool:
    """Whether this start has anything to do with updates (cheap: two stats, no import)."""
    return (config.update.root / update.STATE).exists() or (config.buffer.path.parent / JOB_FILE).exists()


class Transfer:
    """One release's files fetched into `dest`, resumable, rate-limited; runs in a thread."""

    def __init__(self, url: str, dest: Path, max_kbps: float, cancel: threading.Event):
        self.url = url.rstrip("/")
        self.dest = dest
        self.rate = max_kbps * 1000 / 8 if max_kbps > 0 else None  # bytes/s
        self.cancel = cancel
        self.bytes_fetched = 0
        self.resumed = 0  # requests that asked for the rest of a file

    def _open(self, name: str, start: int):
        request = urllib.request.Request(f"{self.url}/{name}")
        if start:
            request.add_header("Range", f"bytes={start}-")
        return urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)  # noqa: S310 (http/https only)

    def manifest(self) -> None:
        with self._open(update.MANIFEST, 0) as response:
            data = response.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise update.UpdateRefused(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
        (self.dest / update.MANIFEST).write_bytes(data)

    def file(self, name: str, size: int) -> None:
        """Fetch `name` until it has `size` bytes, resuming after each dropped link."""
        path = self.dest / name
        delay = 1.0
        while True:
            have = path.stat().st_size if path.exists() else 0
            if have > size:
                path.unlink()
                have = 0
            if have == size:
                return
            try:
                self._fetch_rest(path, have)
                delay = 1.0
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
                if self.cancel.is_set():
                    raise
                if isinstance(err, urllib.error.HTTPError) and err.code in (403, 404, 410):
                    raise update.UpdateRefused(f"{self.url}/{name}: HTTP {err.code}") from None
                log.warning("update: %s: link lost at %d of %d bytes (%s); resuming in %.0f s", name,
                            path.stat().st_size if path.exists() else 0, size, err, delay)  # fmt: skip
                if self.cancel.wait(delay):
                    raise update.UpdateRefused("cancelled") from None
                delay = min(delay * 2, RETRY_MAX_S)

    def _fetch_rest(self, path: Path, have: int) -> None:
        with self._open(path.name, have) as response:
            if have and response.status != 206:  # the server ignored Range: start again
                have = 0
            elif have:
                self.resumed += 1
            with open(path, "r+b" if have else "wb") as file:
                file.seek(have)
                started, sent = time.monotonic(), 0
                while chunk := response.read(CHUNK):
                    if self.cancel.is_set():
                        raise update.UpdateRefused("cancelled")
                    file.write(chunk)
                    sent += len(chunk)
                    self.bytes_fetched += len(chunk)
                    if self.rate:
                        ahead = sent / self.rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                file.flush()
                os.fsync(file.fileno())


def _free_space_problem(manifest: dict, dest: Path, root: Path) -> str | None:
    missing = sum(
        max(0, f["size"] - ((dest / f["name"]).stat().st_size if (dest / f["name"]).exists() else 0))
        for f in manifest["files"]
    )
    total = sum(f["size"] for f in manifest["files"])
    needs = [(dest, missing), (root if root.exists() else root.parent, total * VENV_FACTOR)]
    if os.stat(dest).st_dev == os.stat(needs[1][0]).st_dev:
        needs = [(dest, missing + total * VENV_FACTOR)]
    for where, need in needs:
        free = shutil.disk_usage(where).free
        if free < need:
            return f"not enough free space: {need / 1e6:.1f} MB needed on {where}, {free / 1e6:.1f} MB free"
    return None


class Updater:
    """The process's one update: at most one job at a time, owned here, cancelled with the daemon."""

    def __init__(self, remote):
        self.remote = remote
        self.job_path = remote.state_dir / JOB_FILE
        self.task: asyncio.Task | None = None
        self.cancel = threading.Event()
        self.state = "idle"
        self.target: str | None = None  # the version being fetched and installed
        self.refused: dict | None = None  # the last refusal, for the heartbeat
        self._shown: asyncio.Task | None = None

    @property
    def root(self) -> Path:
        return self.remote.config.update.root

    # -- the command ------------------------------------------------------------------------------

    def start(self, args: dict, envelope: dict) -> dict:
        url, version = args.get("url"), args.get("version")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > 500:
            raise CommandRefused("args.url must be the release's http(s):// address")
        try:
            update.parse_version(version)
        except update.UpdateRefused as err:
            raise CommandRefused(f"args.version: {err}") from None
        if self.task is not None and not self.task.done():
            raise CommandRefused(f"an update is under way ({self.state}): try again later")
        trial = update.read_state(self.root).get("trial")
        if isinstance(trial, dict):
            raise CommandRefused(f"version {trial.get('version')} is still on trial: try again later")
        job = {"id": envelope["id"], "version": version, "url": url, "rollback": args.get("rollback") is True}
        update._write_json(self.job_path, job)
        self.launch(job)
        return {"ok": True, "state": "applying", "version": version, "confirm_s": self.confirm_budget()}

    def confirm_budget(self) -> float:
        """How long an operator should wait for `confirmed`: transfer, install, restart, confirm."""
        return 600 + self.remote.config.update.confirm_s

    def launch(self, job: dict) -> None:
        self.cancel.clear()
        self.target, self.refused = job["version"], None
        self.task = asyncio.get_running_loop().create_task(self._run(job))
        self.show_in_heartbeat()

    def view(self) -> dict | None:
        """The heartbeat's `update`: what is under way, else a trial, else the last verdict."""
        if self.task is not None and not self.task.done():
            state = "installing" if self.state == "installing" else "fetching"
            return {"state": "switching" if restart_requested else state, "version": self.target}
        if self.refused:
            return self.refused
        state = update.read_state(self.root)
        if isinstance(trial := state.get("trial"), dict):
            return {"state": "on_trial", "version": str(trial.get("version"))[:20]}
        if isinstance(rolled := state.get("rolled_back"), dict):
            return {"state": "rolled_back", "version": str(rolled.get("version"))[:20],
                    "reason": str(rolled.get("reason"))[:400]}  # fmt: skip
        if isinstance(confirmed := state.get("confirmed"), dict):
            return {"state": "confirmed", "version": str(confirmed.get("version"))[:20]}
        return None

    def show_in_heartbeat(self) -> None:
        if self._shown is None or self._shown.done():
            self._shown = asyncio.get_running_loop().create_task(self._show())

    async def _show(self) -> None:
        """Keep the pipeline's health (a new one after each restart of it) told of the update."""
        while True:
            daemon = self.remote.daemon
            if daemon is not None:
                with contextlib.suppress(OSError):
                    daemon.health.update = self.view()
            await asyncio.sleep(1.0)

    def _reply(self, job_id, reply: dict) -> None:
        node = self.remote.base.node.id
        self.remote.outbox.append(("update", {"id": job_id, "node": node, "command": "update", **reply}))
        self.remote.outbox_ready.set()

    async def _run(self, job: dict) -> None:
        try:
            manifest = await asyncio.to_thread(self._fetch_and_install, job)
        except update.UpdateRefused as err:
            if self.cancel.is_set():
                return  # the daemon is stopping: the job and its files stay for the next start
            log.error("update %s refused: %s", job["version"], err)
            self.refused = {"state": "refused", "version": job["version"], "reason": str(err)[:400]}
            self._forget(job)
            self._reply(job["id"], {"ok": False, "state": "refused", "error": f"cmd/update: {err}"[:400]})
            return
        except Exception as err:  # a bug costs the update, never the daemon
            log.exception("update %s failed", job["version"])
            self.refused = {"state": "refused", "version": job["version"], "reason": f"{err}"[:400]}
            self._forget(job)
            self._reply(job["id"], {"ok": False, "state": "refused", "error": f"cmd/update: {err}"[:400]})
            return
        self._reply(job["id"], {"ok": True, "state": "switching", "version": manifest["version"]})
        log.warning("update: switched to %s; restarting into it", manifest["version"])
        global restart_requested
        restart_requested = True
        await asyncio.sleep(1.0)  # the reply goes out first
        os.kill(os.getpid(), signal.SIGTERM)  # the daemon's own stop; `run` then exits RESTART_EXIT

    def _forget(self, job: dict) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.job_path.unlink()
        shutil.rmtree(self.remote.state_dir / DOWNLOADS / job["version"], ignore_errors=True)

    def _fetch_and_install(self, job: dict) -> dict:
        config = self.remote.config
        dest = self.remote.state_dir / DOWNLOADS / job["version"]
        dest.mkdir(parents=True, exist_ok=True)
        transfer = Transfer(job["url"], dest, config.update.max_kbps, self.cancel)
        self.state = "fetching the manifest"
        self._manifest(transfer)
        running = update.current_version(self.root) or __version__
        manifest = update.read_manifest(dest, config.remote.trusted_keys)
        if manifest["version"] != job["version"]:
            raise update.UpdateRefused(
                f"the manifest is {manifest['version']}, the command said {job['version']}"
            )
        update.check_upgrade(manifest, running, rollback=job["rollback"], schema=update.buffer_schema())
        if problem := _free_space_problem(manifest, dest, self.root):
            raise update.UpdateRefused(problem)
        for entry in manifest["files"]:
            self.state = f"fetching {entry['name']}"
            for attempt in (1, 2):
                transfer.file(entry["name"], entry["size"])
                try:
                    update.verify_files({"files": [entry]}, dest)
                    break
                except update.UpdateRefused:
                    (dest / entry["name"]).unlink()
                    if attempt == 2:
                        raise
        update.verify_files(manifest, dest)
        self.state = "installing"
        update.install(self.root, dest, manifest)
        update.begin_trial(
            self.root, manifest["version"], confirm_s=config.update.confirm_s, command_id=job["id"]
        )
        self._forget(job)
        log.info("update %s: %d bytes fetched, %d resumed requests", job["version"], transfer.bytes_fetched,
                 transfer.resumed)  # fmt: skip
        return manifest

    def _manifest(self, transfer: Transfer) -> None:
        delay = 1.0
        while True:
            try:
                return transfer.manifest()
            except urllib.error.HTTPError as err:
                raise update.UpdateRefused(f"{transfer.url}/{update.MANIFEST}: HTTP {err.code}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as err:
                log.warning("update: manifest: %s; again in %.0f s", err, delay)
                if self.cancel.wait(delay):
                    raise update.UpdateRefused("cancelled") from None
                delay = min(delay * 2, RETRY_MAX_S)

    # -- at each start ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Owned by `edge-node run` beside the pipeline: resume a job, confirm a trial, report a
        switch back. Cancels the job's thread when the daemon stops."""
        try:
            self.show_in_heartbeat()
            with contextlib.suppress(OSError):
                self._report_rollback()
            job = update.read_json(self.job_path)
            if job and self.task is None:
                log.info("update %s: resuming", job.get("version"))
                self.launch(job)
            try:
                await self._confirm_trial(stop)
            except Exception:  # a bug here must not stop the pipeline; ExecStartPre still counts starts
                log.exception("update: confirming the trial failed")
            await stop.wait()
        finally:
            self.cancel.set()
            if self._shown is not None:
                self._shown.cancel()

    def _report_rollback(self) -> None:
        state = update.read_state(self.root)
        rolled = state.get("rolled_back")
        if isinstance(rolled, dict) and not rolled.get("reported"):
            self._reply(rolled.get("id"), {"ok": False, "state": "rolled_back", "version": __version__,
                                           "error": rolled.get("reason", "update_rolled_back")})  # fmt: skip
            rolled["reported"] = True
            update._write_json(self.root / update.STATE, state)

    async def _confirm_trial(self, stop: asyncio.Event) -> None:
        trial = update.read_state(self.root).get("trial")
        if not isinstance(trial, dict) or trial.get("version") != __version__:
            return
        if update.current_version(self.root) != __version__:
            return
        confirm_s = float(trial.get("confirm_s") or self.remote.config.update.confirm_s)
        deadline = time.monotonic() + confirm_s
        delivered = False
        problem = "the pipeline has not started"
        while time.monotonic() < deadline and not stop.is_set():
            await asyncio.sleep(CONFIRM_POLL_S)
            problem = self.remote._problem()  # connected, every sensor reading (issue 13's test)
            daemon = self.remote.daemon
            if problem is None and daemon is not None:
                delivered = delivered or daemon.store.acked_waiting > 0 or daemon.store.backlog == 0
                if delivered:
                    update.confirm(self.root, __version__)
                    log.info("update %s confirmed", __version__)
                    self._reply(trial.get("id"), {"ok": True, "state": "confirmed", "version": __version__})
                    return
        if stop.is_set():
            return  # a stop is not a verdict: ExecStartPre counts this start
        reason = f"not healthy within {confirm_s:g} s: {problem or 'no reading delivered'}"
        log.error("update %s: %s; switching back", __version__, reason)
        update.roll_back(self.root, reason)
        global restart_requested
        restart_requested = True
        os.kill(os.getpid(), signal.SIGTERM)


def update_command(remote, args: dict, envelope: dict) -> dict:
    """The `update` signed command (actions.HANDLERS)."""
    return for_remote(remote).start(args, envelope)
