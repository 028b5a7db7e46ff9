"""The load generator's own WebSocket, Engine.IO and Socket.IO encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messaging.bench import protocol as p


def server_frame(payload: bytes, opcode: int = p.OP_TEXT, fin: bool = True) -> bytes:
    """An unmasked frame as a server sends it."""
    return p.encode_frame(payload, opcode, masked=False, fin=fin)


def test_client_frames_are_masked_and_unmask_to_the_payload() -> None:
    frame = p.encode_frame(b"42[]", mask=b"\x01\x02\x03\x04")
    assert frame[0] == 0x81  # FIN + text
    assert frame[1] == 0x80 | 4  # masked, length 4
    assert frame[2:6] == b"\x01\x02\x03\x04"
    assert frame[6:] != b"42[]"
    assert p.FrameDecoder().feed(frame) == [(p.OP_TEXT, b"42[]")]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_every_length_encoding_round_trips(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    assert p.FrameDecoder().feed(p.encode_frame(payload)) == [(p.OP_TEXT, payload)]
    assert p.FrameDecoder().feed(server_frame(payload)) == [(p.OP_TEXT, payload)]


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.data())
def test_messages_survive_any_split_of_the_byte_stream(
    messages: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(server_frame(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = p.FrameDecoder()
    got = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got += decoder.feed(stream[start:cut])
        start = cut
    assert got == [(p.OP_TEXT, m) for m in messages]


def test_fragmented_message_is_reassembled_around_an_interleaved_ping() -> None:
    stream = (
        server_frame(b'42["newMes', fin=False)
        + server_frame(b"hi", p.OP_PING)
        + server_frame(b'sage",{}]', p.OP_CONTINUATION)
    )
    assert p.FrameDecoder().feed(stream) == [
        (p.OP_PING, b"hi"),
        (p.OP_TEXT, b'42["newMessage",{}]'),
    ]


def test_handshake_accept_matches_rfc_6455_example() -> None:
    assert p.expected_accept(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_request_targets_the_socketio_websocket_endpoint() -> None:
    request, accept = p.handshake_request("http://127.0.0.1:8000/chat/", {"X-Test": "1"})
    lines = request.decode().split("\r\n")
    assert lines[0] == "GET /chat/socket.io/?EIO=4&transport=websocket HTTP/1.1"
    assert "Host: 127.0.0.1:8000" in lines
    assert "Upgrade: websocket" in lines
    assert "X-Test: 1" in lines
    assert request.endswith(b"\r\n\r\n")
    key = next(line.split(": ")[1] for line in lines if line.startswith("Sec-WebSocket-Key"))
    assert accept == p.expected_accept(key.encode())


def test_handshake_response_must_be_101_with_the_right_accept() -> None:
    good = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: abc"
    p.check_handshake_response(good, b"abc")
    with pytest.raises(p.ProtocolError, match="wrong"):
        p.check_handshake_response(good, b"xyz")
    with pytest.raises(p.ProtocolError, match="refused"):
        p.check_handshake_response(b"HTTP/1.1 400 Bad Request", b"abc")


def test_socketio_packets_are_encoded_as_the_v5_protocol_says() -> None:
    assert p.connect_packet({"token": "t"}) == b'40{"token":"t"}'
    assert p.connect_packet(None) == b"40"
    assert p.event_packet("typing", {"a": 1}) == b'42["typing",{"a":1}]'
    assert p.event_packet("sendMessage", {}, ack_id=17) == b'4217["sendMessage",{}]'


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b'0{"sid":"x"}', p.SocketPacket(p.SIO_CONNECT, "/", None, {"sid": "x"})),
        (b'312[{"ok":true}]', p.SocketPacket(p.SIO_ACK, "/", 12, [{"ok": True}])),
        (b'2["newMessage",{}]', p.SocketPacket(p.SIO_EVENT, "/", None, ["newMessage", {}])),
        (b"3/admin,5[1]", p.SocketPacket(p.SIO_ACK, "/admin", 5, [1])),
        (b"1", p.SocketPacket(p.SIO_DISCONNECT, "/", None, None)),
        (
            b'4{"message":"no","data":{"code":"UNAUTHORIZED"}}',
            p.SocketPacket(
                p.SIO_CONNECT_ERROR, "/", None, {"message": "no", "data": {"code": "UNAUTHORIZED"}}
            ),
        ),
    ],
)
def test_socketio_packets_decode(wire: bytes, expected: p.SocketPacket) -> None:
    assert p.parse_socket_packet(wire) == expected
