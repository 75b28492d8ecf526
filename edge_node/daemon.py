"""The daemon: one TaskGroup, one owner per task (DESIGN §2).

    samplers (one per sensor) -> queue -> store writer -> Store <- forwarder -> broker
                                                 syncer: acked rows out, WAL to the card
                                                 watchdog: WATCHDOG=1 only while every loop moves

Shutdown, in order: stop the samplers, let the store writer commit what they read, let the
forwarder publish `offline` and disconnect, sync the store, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import deque
from functools import partial

from drivers import Driver
from sensors.simulation import SimulatedNode

from . import status_file
from .clock import boot_id, boottime, clock_synced, format_ts
from .config import Config, SensorConfig
from .forwarder import Forwarder, publish_timeout
from .health import Health
from .notify import Notifier
from .quality import NodeAir, refine, units_with_corrections
from .sensors import build_sensors, check_faults
from .store import BufferPathError, NewReading, Store, StoreError

log = logging.getLogger(__name__)

STORE_OPEN_BUDGET_S = 300  # quick_check of a full 2M-row buffer on an SD card can take minutes
QUEUE_SIZE = 1000  # readings between samplers and the store writer
OVERFLOW_ROWS = 10_000  # readings held in memory while the store cannot be written
MAX_FAULT_BACKOFF_S = 300.0
STORE_RETRY_S = 5.0


async def _sleep_beating(seconds: float, beat) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        beat()
        await asyncio.sleep(min(left, 1.0))


def _check_values(values) -> None:
    """A driver's bug must not become a poisoned row: only finite numbers reach the store."""
    for key, value in values.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"driver returned {key}={value!r}, not a finite number")


class Liveness:
    """Each loop beats; the watchdog is fed only while none has fallen silent for too long."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._allowed: dict[str, float] = {}

    def register(self, name: str, allowed_silence_s: float) -> partial:
        self._allowed[name] = allowed_silence_s
        self._last[name] = time.monotonic()
        return partial(self._beat, name)

    def _beat(self, name: str) -> None:
        self._last[name] = time.monotonic()

    def unregister(self, name: str) -> None:
        self._allowed.pop(name, None)

    def stalled(self) -> list[str]:
        now = time.monotonic()
        return [n for n, allowed in self._allowed.items() if now - self._last[n] > allowed]


class Daemon:
    def __init__(self, config: Config, *, notifier: Notifier | None = None, remote=None):
        check_faults(config)
        self.config = config
        self.remote = remote  # edge_node.remote.NodeRemote: signed commands, the remote config layer
        self.notifier = notifier or Notifier()
        self.liveness = Liveness()
        self.store = Store(
            config.buffer.path,
            max_rows=config.buffer.max_rows,
            max_bytes=config.buffer.max_bytes,
            sync_interval_s=config.buffer.sync_interval_s,
        )
        self.ready = asyncio.Event()
        self._stored = asyncio.Event()  # a commit: the syncer's deadline starts with the first after a sync
        self.air = NodeAir()
        self._overflow: deque[NewReading] = deque()
        self._units: dict[str, dict[str, str]] = {}  # each sensor's, recorded in the buffer when it opens
        self._open_again_at = 0.0  # monotonic time of the next try while the buffer cannot be opened

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        self.notifier.extend_timeout(STORE_OPEN_BUDGET_S, f"checking the buffer {cfg.buffer.path}")
        try:
            self.store.open()
            store_error = None
        except BufferPathError:
            raise  # a setup error: `edge-node run` says so and exits
        except StoreError as err:  # a failing card: sample into memory, report it, retry the open
            log.error("%s; holding readings in memory until the buffer opens", err)
            store_error = str(err)
        sim = SimulatedNode(seed=cfg.simulation.seed, faults=cfg.simulation.faults)
        try:
            sensors = build_sensors(cfg, sim)
            drivers, root = sensors.drivers, sensors.host_root
            from drivers.host import host_vitals

            disk = str(cfg.buffer.path.parent)
            self.health = Health(
                config_hash=cfg.config_hash,
                host_vitals=lambda: host_vitals(root, disk),
                site=cfg.node.site,
                location=None if cfg.node.lat is None else {"lat": cfg.node.lat, "lon": cfg.node.lon},
            )
            if self.remote is not None:
                self.health.config_rolled_back = self.remote.rolled_back()
            for name, driver in drivers.items():
                self._units[name] = units_with_corrections(driver.units)
                self.health.sensor(name)
            if store_error is None:
                self._store_units()
            else:
                self.health.buffer_faults["open"] = store_error
            self.forwarder = Forwarder(
                node_id=cfg.node.id,
                topic_root=cfg.topic_root,
                broker=cfg.broker,
                forward=cfg.forward,
                store=self.store,
                health=self.health,
                heartbeat_s=cfg.health.heartbeat_s,
                clock_root=root,
                beat=self.liveness.register("forwarder", 2 * publish_timeout(cfg.broker) + 10),
                reconnect_max_s=cfg.forward.reconnect_max_s,
                commands=self.remote.command_handler(self) if self.remote is not None else None,
            )
            self.health.command_counts = lambda: self.forwarder.commands.counts
            await self._supervise(stop, drivers, sim, root)
            log.info("stopped; backlog %d readings kept in the buffer for the next start", self.store.backlog)
        finally:
            self.store.close()
            sim.close()
            self.notifier.close()

    async def _supervise(
        self, stop: asyncio.Event, drivers: dict[str, Driver], sim: SimulatedNode, root: str
    ):
        queue: asyncio.Queue[NewReading | None] = asyncio.Queue(QUEUE_SIZE)
        async with asyncio.TaskGroup() as tg:
            samplers = [
                tg.create_task(
                    self._sample(self.config.sensors[name], driver, queue, root), name=f"sampler:{name}"
                )
                for name, driver in drivers.items()
            ]
            writer = tg.create_task(self._write_store(queue), name="store-writer")
            forwarder = tg.create_task(self.forwarder.run(), name="forwarder")
            helpers = [
                tg.create_task(self._write_status(), name="status-writer"),
                tg.create_task(self._sync_store(), name="store-syncer"),
                tg.create_task(self._watchdog(), name="watchdog"),
            ]
            if sim.active:
                helpers.append(tg.create_task(sim.run(), name="simulation"))
            self.notifier.ready(self._status_line())
            self.ready.set()
            log.info("running: %d sensors, broker %s", len(drivers), self.config.broker.url)

            await stop.wait()
            log.info("stopping")
            self.notifier.stopping()
            for task in samplers:
                task.cancel()
            await asyncio.gather(*samplers, return_exceptions=True)
            await queue.put(None)
            await writer
            self.forwarder.stop()
            try:
                async with asyncio.timeout(10):
                    await asyncio.shield(forwarder)
            except TimeoutError:
                forwarder.cancel()
            for task in helpers:
                task.cancel()
        self.forwarder.flush_acks_safely()
        for driver in drivers.values():
            with contextlib.suppress(Exception):
                driver.close()

    # -- samplers -----------------------------------------------------------------------------

    async def _sample(self, cfg: SensorConfig, driver: Driver, queue: asyncio.Queue, root: str) -> None:
        name, interval = cfg.name, cfg.interval_s
        beat = self.liveness.register(f"sampler:{name}", 2 * interval + 60)
        boot = boot_id()
        opened = False
        failures = 0
        next_read_in = getattr(driver, "next_read_in", None)
        next_at = time.monotonic()
        try:
            while True:
                beat()
                try:
                    if not opened:
                        await asyncio.to_thread(driver.open)
                        opened = True
                    reading = await asyncio.to_thread(driver.read)
                    if reading is not None:
                        _check_values(reading.values)
                except Exception as err:  # a sensor never takes the daemon down
                    failures += 1
                    message = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                    if failures == 1:
                        log.warning("sensor %s: %s", name, message)
                    self.health.fault(name, message)
                    delay = min(MAX_FAULT_BACKOFF_S, interval * 2 ** min(failures - 1, 8))
                    await _sleep_beating(max(delay, 1.0), beat)  # a long backoff is not a hang
                    next_at = time.monotonic()
                    continue
                if failures:
                    log.info("sensor %s: recovered after %d failed reads", name, failures)
                failures = 0
                if reading is None:  # asleep in its duty cycle: nothing to report this time
                    self.health.ok(name, asleep=True)
                else:
                    self.health.ok(name, warming="warming_up" in reading.quality)
                    self.health.sensor(name).last_values = dict(reading.values)
                    refined = refine(reading.values, reading.quality, cfg.calibration, self.air)
                    stamp = NewReading(
                        sensor=name,
                        values=refined.values,
                        quality=refined.quality,
                        meta=refined.meta,
                        wall=time.time(),
                        mono=boottime(),
                        boot_id=boot,
                        synced=clock_synced(root),
                    )
                    await queue.put(stamp)
                if status := getattr(driver, "status", None):
                    self.health.sensor(name).extra = dict(status())
                next_at += interval
                now = time.monotonic()
                if next_at < now:  # a slow read: skip the missed slots rather than burst
                    next_at = now + interval - (now - next_at) % interval
                if next_read_in is not None and (due := next_read_in()) is not None and now + due < next_at:
                    next_at = now + due  # a duty-cycled sensor's next step comes before the interval
                await asyncio.sleep(next_at - now)
        finally:
            self.liveness.unregister(f"sampler:{name}")

    # -- store ----------------------------------------------------------------------------------

    async def _write_store(self, queue: asyncio.Queue) -> None:
        """Commit whatever the samplers queued, in one transaction per wake-up; None ends it."""
        beat = self.liveness.register("store-writer", 30)
        done = False
        while not done:
            beat()
            items = []
            retrying = self._overflow or not self.store.is_open
            try:
                items.append(await asyncio.wait_for(queue.get(), STORE_RETRY_S if retrying else 1.0))
            except TimeoutError:
                pass
            while not queue.empty():
                items.append(queue.get_nowait())
            done = None in items
            if not self.store.is_open and not done and time.monotonic() >= self._open_again_at:
                await self._open_store(beat)  # it could not be opened: try again, readings or not
            batch = [*self._overflow, *(i for i in items if i is not None)]
            if batch:
                self._commit(batch)
        if self._overflow:
            log.error("stopping: %d readings held in memory never reached the buffer", len(self._overflow))

    async def _open_store(self, beat) -> None:
        """Open the buffer in a thread (quick_check of a big buffer on a card takes minutes),
        beating meanwhile so that the watchdog does not kill what is held in memory."""
        opening = asyncio.ensure_future(asyncio.to_thread(self.store.open))
        while not opening.done():
            beat()
            await asyncio.wait({opening}, timeout=1.0)
        try:
            opening.result()
        except StoreError as err:
            self.health.buffer_faults["open"] = str(err)
            self._open_again_at = time.monotonic() + STORE_RETRY_S
            return
        self._store_units()
        if self.health.buffer_faults.pop("open", None) is not None:
            log.info("buffer opened: %d readings held in memory go to it", len(self._overflow))
        self.forwarder.new_data.set()

    def _store_units(self) -> None:
        for name, units in self._units.items():
            self.store.set_units(name, units)

    def _commit(self, batch: list[NewReading]) -> None:
        if not self.store.is_open:
            self._hold(batch)
            return
        try:
            seqs = self.store.append(batch)
        except StoreError as err:
            if "write" not in self.health.buffer_faults:
                log.error("%s; holding readings in memory until the buffer takes them", err)
            self.health.buffer_faults["write"] = str(err)
            self._hold(batch)
            return
        if self.health.buffer_faults.pop("write", None) is not None:
            log.info("buffer writable again: %d held readings stored", len(self._overflow))
        if self.health.lost_in_memory:  # counted where the fleet sees it, for good
            with contextlib.suppress(StoreError):
                self.store.add_dropped(self.health.lost_in_memory)
                self.health.lost_in_memory = 0
        if self._overflow:  # the batch starts with them: old readings, to be sent as backlog
            self.forwarder.held(seqs[0], seqs[len(self._overflow) - 1])
            self._overflow.clear()
        self._stored.set()
        self.forwarder.new_data.set()

    def _hold(self, batch: list[NewReading]) -> None:
        """Keep sampling into a bounded overflow; oldest first out if the store stays down."""
        lost = max(0, len(batch) - OVERFLOW_ROWS)
        self._overflow = deque(batch[lost:])
        if lost:
            self.health.lost_in_memory += lost
            log.error("in-memory overflow full: %d readings lost", lost)

    async def _sync_store(self) -> None:
        """One fdatasync per `sync_interval_s` at most, when Store.sync_due_in says (the power-cut
        window for readings not yet delivered), none while nothing was stored (DESIGN §3)."""
        interval = self.config.buffer.sync_interval_s
        faults = self.health.buffer_faults
        while True:
            due = self.store.sync_due_in()
            if due is None:  # nothing to sync: wait for a commit, or one interval for the acks
                self._stored.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stored.wait(), interval)
                if self.store.sync_due_in() is not None:
                    continue
            elif due > 0:  # a commit meanwhile may be due sooner, an ack may make it due later
                await asyncio.sleep(min(due, interval))
                continue
            errors = []  # a full or failing card: report, retry next tick
            if not self.store.appended_since_sync:  # else the acks went with the readings' commits
                try:
                    self.forwarder.flush_acks()
                except StoreError as err:
                    errors.append(str(err))
            try:  # even if the acks could not go: what is committed must still reach the card
                await asyncio.to_thread(self.store.sync)
            except StoreError as err:
                errors.append(str(err))
            if errors:
                if "sync" not in faults:
                    log.error("%s", "; ".join(errors))
                faults["sync"] = "; ".join(errors)
                await asyncio.sleep(interval)  # the deadline has passed: retry at the interval's pace
            elif faults.pop("sync", None) is not None:
                log.info("buffer synced to the card again")

    # -- the technician's view (`edge-node status`) ---------------------------------------------

    async def _write_status(self) -> None:
        """A small JSON for `edge-node status`: in systemd's RuntimeDirectory (RAM) when there is
        one, else beside the buffer at the heartbeat's pace, to spare the card."""
        cfg = self.config
        where = status_file.written_at(
            cfg.buffer.path.parent, cfg.health.heartbeat_s, os.environ.get("RUNTIME_DIRECTORY")
        )
        path, interval = where.path, where.interval_s
        failing = False
        while True:
            try:
                status_file.write(path, self._status_snapshot())
                failing = False
            except OSError as err:
                if not failing:  # once, not every heartbeat: the log may live on the same card
                    log.warning("cannot write %s: %s", path, err)
                failing = True
            await asyncio.sleep(interval)

    def _status_snapshot(self) -> status_file.Status:
        fwd, store = self.forwarder, self.store
        try:
            oldest = store.oldest_unsent_wall()
        except StoreError:  # a failing card: the forwarder reports it; the rest is still worth showing
            oldest = None
        return {
            "ts": format_ts(time.time()),
            "pid": os.getpid(),
            "node": self.config.node.id,
            "broker": {
                "url": self.config.broker.url,
                "connected": fwd.connected,
                "last_publish": format_ts(fwd.last_publish) if fwd.last_publish else None,
            },
            "seq_sent": fwd.seq_sent,
            "backlog": store.backlog,
            "oldest_unsent_age_s": round(time.time() - oldest, 1) if oldest else 0.0,
            "dropped": store.dropped,
            "buffer_fault": self.health.buffer_error,  # None while the card is fine
            "config": self.remote.status() if self.remote is not None else {"hash": self.config.config_hash},
            "protocol": self.health.protocol,
            "refused": self.health.refused,  # None while the broker accepts what the node sends
            "quarantined": self.health.quarantined,
            "sensors": {
                name: {**s.as_json(), "last_values": s.last_values} for name, s in self.health.sensors.items()
            },
        }

    # -- systemd --------------------------------------------------------------------------------

    def _status_line(self) -> str:
        faults = [n for n, s in self.health.sensors.items() if s.state == "fault"]
        broker = "connected" if self.forwarder.connected else "disconnected"
        line = f"{len(self.health.sensors)} sensors, backlog {self.store.backlog}, broker {broker}"
        return line + (f", fault: {', '.join(faults)}" if faults else "")

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s or 10.0
        while True:
            stalled = self.liveness.stalled()
            if stalled:
                log.error("withholding the watchdog: no progress in %s", ", ".join(stalled))
            elif self.notifier.watchdog_interval_s:
                self.notifier.watchdog()
            self.notifier.status(self._status_line())
            await asyncio.sleep(interval)
