"""The lean Socket.IO decoding, websocket framing and RESP commands agree with their protocols."""

from __future__ import annotations

import hiredis
import pytest
from socketio import packet as sio_packet
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from messaging.redis_wire import command
from messaging.sockets import _decode_event
from messaging.websocket_transport import _frame, is_direct_websocket


@pytest.mark.parametrize(
    "encoded",
    ['2["sendMessage",{"a":1}]', '27["typing",{"x":[1,2]}]', '2123456["e"]', '20["e",null,3]'],
)
def test_events_decode_like_python_socketio(encoded: str) -> None:
    reference = sio_packet.Packet(encoded_packet=encoded)
    ack_id, name, args = _decode_event(encoded) or (None, "", [])
    assert reference.packet_type == sio_packet.EVENT
    assert ack_id == reference.id
    assert [name, *args] == reference.data


@pytest.mark.parametrize(
    "encoded",
    ['2/chat,["e"]', "2[", "2{}", "2[]", "2[1]", "2", "21", "2" + "1" * 120 + '["e"]'],
)
def test_anything_unusual_is_left_to_python_socketio(encoded: str) -> None:
    assert _decode_event(encoded) is None


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_frames_parse_back_with_the_websockets_library(size: int, opcode: Opcode) -> None:
    payload = bytes(i % 251 for i in range(size))
    reader = StreamReader()
    reader.feed_data(_frame(payload, opcode.value))
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    else:  # pragma: no cover - the whole frame was fed
        raise AssertionError("frame incomplete")
    assert frame.fin and frame.opcode == opcode and frame.data == payload


@pytest.mark.parametrize(
    ("query", "direct"),
    [
        (b"EIO=4&transport=websocket", True),
        (b"EIO=4&transport=websocket&t=abc", True),
        (b"EIO=4&transport=websocket&sid=xyz", False),  # an upgrade of a polling session
        (b"EIO=3&transport=websocket", False),
        (b"EIO=4&transport=polling", False),
        (b"EIO=4&transport=websocket&j=0", False),
    ],
)
def test_only_fresh_engineio4_websockets_take_the_direct_path(query: bytes, direct: bool) -> None:
    assert is_direct_websocket({"type": "websocket", "query_string": query}) is direct
    assert not is_direct_websocket({"type": "http", "query_string": query})


@pytest.mark.parametrize(
    "parts",
    [
        ("PING",),
        ("PUBLISH", "deliver:u1", b'{"o":"r"}\n42["newMessage",{}]'),
        ("AUTH", "p\r\nw", ""),
    ],
)
def test_commands_are_resp_arrays_of_bulk_strings(parts: tuple[str | bytes, ...]) -> None:
    reader = hiredis.Reader()
    reader.feed(command(*parts))
    assert reader.gets() == [p.encode() if isinstance(p, str) else p for p in parts]
    assert reader.gets() is False
