"""Sending ASGI messages from a plain callback, in order, without a task hop per message.

The relay receives engine bytes in the upstream connection's read callback. Awaiting the ASGI
``send`` there is impossible, and waking the relay's task to do it costs a turn of the event
loop per chunk. An ASGI server's ``send`` is a coroutine that, unless the client's socket is
applying back-pressure, finishes without ever suspending; so the coroutine is started right in
the callback and usually completes there. When it does suspend, a task finishes it, later
messages queue behind it in order, and the source is paused until the queue is empty.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]


class CallbackSender:
    def __init__(self, send: Send, *, pause: Callable[[], None], resume: Callable[[], None],
                 failed: Callable[[BaseException], None]) -> None:
        self._send = send
        self._pause = pause  # the source stops producing while a send is blocked
        self._resume = resume
        self._failed = failed  # told once, with the error, if a send raises
        self._backlog: deque[dict[str, Any]] = deque()
        self._driver: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    def push(self, message: dict[str, Any]) -> None:
        """Send ``message`` now if the server takes it without waiting, else after those queued."""
        if self.error is not None:
            return
        if self._driver is not None:
            self._backlog.append(message)
            return
        sending = self._send(message)
        if not asyncio.iscoroutine(sending):  # some other awaitable: no way to run it inline
            self._block(asyncio.ensure_future(sending), None)
            return
        try:
            waiting_on = sending.send(None)
        except StopIteration:
            return  # the usual case: written to the socket, nothing to wait for
        except BaseException as exc:  # noqa: BLE001 - handed to the relay, never into the caller's callback
            self._fail(exc)
            return
        self._block(sending, waiting_on)

    async def drain(self) -> None:
        """Wait until every pushed message was sent; raise what a send raised."""
        while self._driver is not None:
            await asyncio.shield(self._driver)
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        """Drop what is queued and stop a blocked send (the stream is being torn down)."""
        self._backlog.clear()
        if self._driver is not None:
            self._driver.cancel()

    def _block(self, sending: Any, waiting_on: Any) -> None:
        self._pause()
        self._driver = asyncio.ensure_future(self._finish(sending, waiting_on))

    async def _finish(self, sending: Any, waiting_on: Any) -> None:
        try:
            if asyncio.iscoroutine(sending):
                await _resume(sending, waiting_on)
            else:
                await sending
            while self._backlog:
                await self._send(self._backlog.popleft())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - kept for drain()
            self._fail(exc)
        finally:
            self._driver = None
            if self.error is None:
                self._resume()

    def fail(self, exc: BaseException) -> None:
        """The source failed: stop sending and report ``exc`` as a failed send would be."""
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            self._backlog.clear()
            self._failed(exc)


async def _resume(coroutine: Any, waiting_on: Any) -> None:
    """Run a coroutine that was started by hand and suspended on ``waiting_on`` to its end, as
    its task would have: wait for what it yielded, then step it again."""
    try:
        while True:
            if waiting_on is None:
                await asyncio.sleep(0)  # a bare yield (asyncio.sleep(0) inside it)
            else:
                # A task clears this flag when it takes the future on; a future still flagged
                # refuses a second await ("await wasn't used with future").
                waiting_on._asyncio_future_blocking = False
                await asyncio.wait((waiting_on,))  # its outcome is the coroutine's to read when stepped
            waiting_on = coroutine.send(None)
    except StopIteration:
        return
    except asyncio.CancelledError:
        coroutine.close()
        raise
