"""A message an operation sends after this server closed the socket (a revocation, too many sockets) is dropped,
not logged as a traceback (mpupload/server/graphql/router.py); one sent on an open socket that fails still
fails."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnected, WebSocketState

from mpupload.server.graphql.router import _LegacyWS, _TransportWS


class FakeStarletteSocket:
    def __init__(self, state: WebSocketState) -> None:
        self.application_state = state


class FakeAdapter:
    """strawberry's ASGI adapter: ``ws`` is Starlette's socket; ``send_json`` fails as Starlette does once the
    server has sent its close."""

    def __init__(self, state: WebSocketState) -> None:
        self.ws = FakeStarletteSocket(state)
        self.sent: list[Any] = []

    async def send_json(self, message: Any) -> None:
        if self.ws.application_state == WebSocketState.DISCONNECTED:
            raise WebSocketDisconnected('Cannot call "send" once a close message has been sent.')
        if message.get("type") == "boom":
            raise RuntimeError("the transport failed")
        self.sent.append(message)


@pytest.mark.parametrize("handler_class", [_TransportWS, _LegacyWS])
def test_a_message_after_the_servers_close_is_dropped(handler_class: type) -> None:
    handler = object.__new__(handler_class)
    handler.websocket = FakeAdapter(WebSocketState.DISCONNECTED)
    asyncio.run(handler.send_message({"id": "1", "type": "next", "payload": {}}))  # no exception
    assert handler.websocket.sent == []


@pytest.mark.parametrize("handler_class", [_TransportWS, _LegacyWS])
def test_a_message_on_an_open_socket_is_sent_and_its_failure_is_not_hidden(handler_class: type) -> None:
    handler = object.__new__(handler_class)
    handler.websocket = FakeAdapter(WebSocketState.CONNECTED)
    asyncio.run(handler.send_message({"id": "1", "type": "next", "payload": {}}))
    assert handler.websocket.sent == [{"id": "1", "type": "next", "payload": {}}]
    with pytest.raises(RuntimeError, match="the transport failed"):
        asyncio.run(handler.send_message({"id": "1", "type": "boom"}))
