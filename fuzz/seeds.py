"""Seeds of the reassembler fuzz target, written from readable steps.

usage: python3 fuzz/seeds.py    (rewrites fuzz/corpus/reassembler/)

The input format is fuzz_targets/reassembler.rs's: a first byte (end A's role % 3; bit 7: end B,
A's peer, traced too), then operations (bit 7: on end B; (op & 0x7f) % 7 is the kind).
"""
import os

CLIENT, SERVER, UNKNOWN = 0, 1, 2
BOTH = 0x80
A, B = 0, 0x80

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "reassembler")


def send(end, data):
    return ("data", end | 1, data)


def recv(end, data):
    return ("data", end | 0, data)


def gap(end, dir_send, kib):
    return ("byte", end | (3 if dir_send else 2), kib)


def wait(ms):
    """Time passes (tens of ms), holes expire, the stitcher ticks."""
    assert ms % 10 == 0 and ms <= 2550
    return ("byte", 4, ms // 10)


def late(end, dir_send, data):
    """Data held back until the next data piece has landed."""
    return ("data", end | 5 | (0 if dir_send else 0x40), data)


def close(end):
    return ("op", end | 6)


def encode(first, steps):
    out = bytearray([first])
    for step in steps:
        if step[0] == "data":
            _, op, data = step
            # A data operation carries at most 255 bytes: longer data is several.
            for i in range(0, max(len(data), 1), 255):
                part = data[i:i + 255]
                out += bytes([op, len(part)]) + part
        elif step[0] == "byte":
            out += bytes([step[1], step[2]])
        else:
            out.append(step[1])
    return bytes(out)


def exchange(req, resp, both=True, delay_ms=0):
    """A request and its response, seen by client A and, when `both`, server B."""
    steps = [send(A, req)]
    if both:
        steps += [recv(B, req), send(B, resp)]
    if delay_ms:
        steps.append(wait(delay_ms))
    steps.append(recv(A, resp))
    return steps


JSON_OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"a": [1, 2]}'
GET_V3 = b"GET /v3 HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n\r\n"
LEN_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nlength body"


def uwsgi_packet():
    def var(k, v):
        return len(k).to_bytes(2, "little") + k + len(v).to_bytes(2, "little") + v

    body = b"".join(
        var(k, v)
        for k, v in [
            (b"REQUEST_METHOD", b"POST"),
            (b"REQUEST_URI", b"/identity/v3/auth/tokens"),
            (b"HTTP_HOST", b"127.0.0.1"),
            (b"CONTENT_LENGTH", b"2"),
            (b"REMOTE_ADDR", b"127.0.0.1"),
            (b"REMOTE_PORT", b"40312"),
        ]
    )
    return b"\x00" + len(body).to_bytes(2, "little") + b"\x00" + body


def late_reader(close_each):
    """Issue 12: a client reading each answer 0.1, 0.6, 2 s after the server wrote it."""
    steps = []
    for i, ms in enumerate([100, 600, 2000]):
        req = b"GET /len?i=%d HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n" % i
        steps += [send(A, req), recv(B, req), send(B, LEN_OK)]
        if close_each:
            steps.append(close(B))
        steps += [wait(ms), recv(A, LEN_OK)]
        if close_each:
            steps.append(close(A))
    return steps


CONNECT = b"CONNECT foo.bar.com:443 HTTP/1.1\r\nHost: foo.bar.com:443\r\nContent-Length: 10\r\n\r\n"
INSIDE = b"GET /inside HTTP/1.1\r\nHost: foo.bar.com\r\n\r\n"
EMPTY_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

SEEDS = {
    # The first seeds (before issue 12).
    "continue": (CLIENT, [
        send(A, b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"),
        recv(A, b"HTTP/1.1 100 Continue\r\n\r\n"),
        send(A, b"data"),
        recv(A, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    ]),
    "gap_in_body": (CLIENT, [
        send(A, b"POST /x HTTP/1.1\r\nContent-Length: 3000\r\n\r\n"),
        gap(A, True, 2),
        send(A, b"GET /y HTTP/1.1\r\n\r\n"),
        recv(A, JSON_OK),
        recv(A, JSON_OK),
    ]),
    "garbage": (CLIENT, [
        send(A, b"\x16\x03\x01\x00\xffgarbage\r\n" + GET_V3),
        recv(A, JSON_OK),
    ]),
    "keepalive": (CLIENT, [
        send(A, GET_V3),
        recv(A, JSON_OK),
        send(A, GET_V3),
        recv(A, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n"),
    ]),
    "reorder": (UNKNOWN, [late(A, True, GET_V3), recv(A, JSON_OK)]),
    "server": (SERVER, [recv(A, GET_V3), send(A, JSON_OK)]),
    "uwsgi": (SERVER, [
        recv(A, uwsgi_packet()[:20]),
        recv(A, uwsgi_packet()[20:] + b"{}"),
        wait(100),
        send(A, b"HTTP/1.1 201 CREATED\r\nContent-Length: 2\r\n\r\n{}"),
    ]),
    # Issue 12: a slow reader, both ends traced.
    "late_reader_keepalive": (CLIENT | BOTH, late_reader(False)),
    "late_reader_close": (CLIENT | BOTH, late_reader(True)),
    # Transfer-Encoding as one list across field lines.
    "te_deflate_then_chunked": (SERVER, [
        recv(A, b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        send(A, EMPTY_OK),
    ]),
    "te_chunked_not_final_request": (SERVER, [
        recv(A, b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: deflate\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"),
        send(A, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        close(A),
    ]),
    "te_chunked_not_final_response": (CLIENT, [
        send(A, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"),
        recv(A, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        close(A),
    ]),
    "te_with_content_length": (CLIENT | BOTH, exchange(
        b"POST /x HTTP/1.1\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        EMPTY_OK,
    )),
    # CONNECT: no content, a tunnel both ways after a 2xx, HTTP again after a refusal.
    "connect_tunnel": (CLIENT | BOTH, [
        send(A, CONNECT + INSIDE), recv(B, CONNECT + INSIDE),
        send(B, b"HTTP/1.1 200 Connection established\r\n\r\n" + EMPTY_OK),
        recv(A, b"HTTP/1.1 200 Connection established\r\n\r\n" + EMPTY_OK),
        send(A, INSIDE), recv(B, INSIDE),
    ]),
    "connect_refused": (CLIENT, [
        send(A, CONNECT + INSIDE),
        recv(A, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"),
        recv(A, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    ]),
    "upgrade_101": (CLIENT | BOTH, [
        send(A, b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
        recv(B, b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
        send(B, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi"),
        recv(A, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi"),
        send(A, b"\x81\x85\x00\x00\x00\x00hello GET / HTTP/1.1\r\n\r\n"),
    ]),
    # Lenient reads said; malformed heads kept as broken messages.
    "bare_lf_smuggle": (CLIENT | BOTH, exchange(
        b"POST /hello HTTP/1.1\r\nHost: a\nContent-Length: 23\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
        EMPTY_OK,
    )),
    "bare_lf_chunked": (CLIENT, [
        send(A, b"GET / HTTP/1.1\n\n"),
        recv(A, b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n5\nhello\n0\n\n"),
    ]),
    "obs_fold_request": (CLIENT | BOTH, exchange(
        b"POST /hello HTTP/1.1\r\nHost: a\r\n  folded\r\n\r\n",
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    )),
    "obs_fold_response": (CLIENT, [
        send(A, b"GET / HTTP/1.1\r\n\r\n"),
        recv(A, b"HTTP/1.1 200 OK\r\nX-Long: a\r\n b\r\nContent-Length: 2\r\n\r\nhi"),
    ]),
    "gap_in_head": (SERVER, [
        recv(A, b"GET /lost HTTP/1.1\r\nHo"),
        gap(A, False, 0),
        recv(A, b"GET /found HTTP/1.1\r\n\r\n"),
        send(A, EMPTY_OK),
    ]),
}


def main():
    os.makedirs(CORPUS, exist_ok=True)
    for name, (first, steps) in SEEDS.items():
        with open(os.path.join(CORPUS, name), "wb") as f:
            f.write(encode(first, steps))
    print(f"{len(SEEDS)} seeds in {CORPUS}")


if __name__ == "__main__":
    main()
