"""Alert events to this process's WatchAlerts streams, as they commit.

One thread per server process follows the ``alert_events`` table and hands
each new event to every subscribed stream's queue:

- PostgreSQL: ``LISTEN settlement_alerts`` on a connection of its own. The
  transaction that writes alert events notifies their ids, and PostgreSQL
  delivers the notification at commit, from whichever server process wrote
  them; the feed reads exactly those events. (Reading "every id above the last
  one seen" would skip an event whose transaction committed after a later id.)
- SQLite: writers are serialized, so ids commit in order; the feed reads the
  events after the last id every ``poll_seconds``.

A stream that needs what it missed passes ``after_event_id`` (resume).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from sqlalchemy import Engine

from settlement.ledger.alerts import CHANNEL, AlertDesk

log = logging.getLogger("settlement_server")


class AlertFeed:
    """Fan-out of committed alert events to subscribers (one queue each)."""

    def __init__(self, engine: Engine, poll_seconds: float = 0.02) -> None:
        self.engine = engine
        self.desk = AlertDesk(engine, lambda: 0)  # reads only
        self.poll_seconds = poll_seconds
        self.closed = threading.Event()
        self._subscribers: set[queue.Queue[dict[str, Any]]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def subscribe(self) -> queue.Queue[dict[str, Any]]:
        """A queue that receives every event committed from now on."""
        q: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=10_000)
        with self._lock:
            self._subscribers.add(q)
            if self._thread is None or not self._thread.is_alive():
                self.closed.clear()  # a server started again on the same core
                self._ready.clear()
                self._thread = threading.Thread(target=self._run, name="alert-feed",
                                                daemon=True)
                self._thread.start()
        self._ready.wait(10)  # listening before the caller relies on it
        return q

    def unsubscribe(self, q: queue.Queue[dict[str, Any]]) -> None:
        with self._lock:
            self._subscribers.discard(q)

    def close(self) -> None:
        """End the feed (the server is stopping): streams see ``closed`` and finish."""
        self.closed.set()

    def _publish(self, events: list[dict[str, Any]]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for event in events:
            for q in subscribers:
                try:
                    q.put_nowait(event)
                except queue.Full:  # a stalled console loses events, never the feed
                    log.warning("alert feed: a subscriber's queue is full; event %d dropped",
                                event["id"])

    def _run(self) -> None:
        while not self.closed.is_set():
            try:
                if self.engine.dialect.name == "postgresql":
                    self._listen()
                else:
                    self._poll()
            except Exception:  # noqa: BLE001 - a database outage must not end the feed
                log.warning("alert feed: database error; retrying in 1 s", exc_info=True)
                self.closed.wait(1.0)

    def _poll(self) -> None:
        last = self.desk.last_event_id()
        self._ready.set()
        while not self.closed.is_set():
            events = self.desk.events_after(last)
            if events:
                last = events[-1]["id"]
                self._publish(events)
            else:
                self.closed.wait(self.poll_seconds)

    def _listen(self) -> None:
        fairy = self.engine.raw_connection()
        pg = fairy.driver_connection
        assert pg is not None
        fairy.detach()  # a connection of its own, closed here, never back in the pool
        try:
            pg.autocommit = True
            pg.execute(f"LISTEN {CHANNEL}")
            self._ready.set()
            while not self.closed.is_set():
                ids: list[int] = []
                for note in pg.notifies(timeout=0.5):
                    ids += [int(i) for i in note.payload.split(",") if i]
                    break
                if ids:
                    self._publish(self.desk.events(ids))
        finally:
            fairy.close()
