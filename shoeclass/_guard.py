"""What keeps one request from holding the server: the ASGI :class:`Guard` (body size, body and
request timeouts, a multipart body cut short, a JSON 500 for bugs) and a header timeout for
uvicorn's h11 protocol, which has none -- a connection that opens and sends nothing, or trickles
its request line and headers, would otherwise hold a socket for as long as the client likes."""
from __future__ import annotations

import asyncio
import logging
import threading

import h11
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["Guard", "Rejected", "error_response", "header_timeout_protocol", "STOP"]

logger = logging.getLogger("shoeclass.service")


def error_response(status: int, detail: str, errors: list[dict] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "errors": errors or []}, status_code=status)


class Rejected(HTTPException):
    """A request refused because of one field: ``{"detail": "field: message", "errors": [...]}``."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(status, f"{field}: {message}")
        self.field, self.message = field, message


STOP = "shoeclass.stop"  # scope key: the threading.Event that stops this request's classification


class Guard:
    """ASGI middleware: refuses bodies over ``max_bytes`` (Content-Length first, then the bytes
    actually received), a body that stalls for ``body_timeout`` s (408) or a multipart body cut
    before its closing boundary (400), answers 503 and stops the classification of a request still
    running after ``request_timeout`` s, and turns any unexpected exception into a generic JSON 500."""

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout: float, request_timeout: float) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.body_timeout, self.request_timeout = body_timeout, request_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = Rejected(413, "body", f"request body over the limit of {self.max_bytes} bytes")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:  # refused before a byte of it is read
            return await error_response(413, too_big.detail, [{"field": "body", "message": too_big.message}])(
                scope, receive, send)
        received, started, body_done, tail = 0, False, False, b""
        ctype = dict(scope["headers"]).get(b"content-type", b"")
        boundary = ctype.partition(b"boundary=")[2].split(b";")[0].strip(b'"') if b"multipart/" in ctype else b""
        stop = scope[STOP] = threading.Event()

        async def counting_receive() -> Message:
            nonlocal received, body_done, tail
            if body_done:  # after the body: only a disconnect can come, however late
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:
                raise Rejected(408, "body", f"no body bytes for {self.body_timeout:g} s; send the whole "
                                            "request at once") from None
            chunk = message.get("body", b"")
            received += len(chunk)
            tail = (tail + chunk)[-(len(boundary) + 8):]
            if received > self.max_bytes:
                raise too_big
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_done = True
                if boundary and b"--" + boundary + b"--" not in tail:
                    raise Rejected(400, "body", "multipart body cut short (no closing boundary); send it again")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, counting_receive, tracking_send), self.request_timeout)
        except asyncio.TimeoutError:
            stop.set()
            logger.warning("%s %s: over the %s s request timeout", scope.get("method"), scope.get("path"),
                           self.request_timeout)
            if not started:
                await error_response(503, f"request: not finished within the {self.request_timeout:g} s limit; "
                                  "send fewer photos per request", [{"field": "request", "message": "timeout"}])(
                    scope, receive, send)
        except Rejected as exc:  # raised by counting_receive outside a route's handlers
            if started:
                raise
            await error_response(exc.status_code, exc.detail, [{"field": exc.field, "message": exc.message}])(
                scope, receive, send)
        except Exception:
            logger.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await error_response(500, "internal server error; the server log has the details")(scope, receive, send)


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """An ``H11Protocol`` closing connections whose request headers are not complete within ``seconds``."""

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection gets the same time for its headers

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(seconds, self._expired)

        def _expired(self) -> None:
            self._header_timer = None
            # IDLE: no complete request line and headers since the connection opened or the last
            # response (h11 moves the client to SEND_BODY or DONE on a complete header block)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11Protocol
