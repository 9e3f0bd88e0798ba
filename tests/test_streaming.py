"""Streaming request and response bodies, disconnects and flow control.

App: tests/apps/proto_stream.py; it reports what it saw through marker files in a temporary
directory (PROTO_MARKER_DIR) so the test can check it after the client has gone away. The
slow-reader test also runs against the WSGI generator of tests/apps/wsgi_stream.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
import time

import httpx
import pytest
from apps.proto_raw import RawConn, read_slowly_then_fast, request, rss_kib, wait_for_file
from conftest import access_log, resets_on_close, wait_for, wait_for_log

APP = "proto_stream:app"
MiB = 1 << 20


def block(i: int, size: int) -> bytes:
    """Same as proto_stream.block: the i-th message of /download."""
    unit = i.to_bytes(4, "big")
    return (unit * (size // 4 + 1))[:size]


def download_sha(size: int, chunk: int) -> str:
    digest = hashlib.sha256()
    sent = i = 0
    while sent < size:
        n = min(chunk, size - sent)
        digest.update(block(i, n))
        sent += n
        i += 1
    return digest.hexdigest()


@pytest.fixture
def server(run_rsasgi, markers):
    return run_rsasgi(APP, env={"PROTO_MARKER_DIR": str(markers)})


def still_serving(server):
    r = httpx.get(f"{server.url}/", timeout=10)
    assert r.status_code == 200 and r.content == b"ok"
    out = server.output()
    assert "panicked" not in out, out[-3000:]


# --- uploads ---------------------------------------------------------------------------------


def test_chunked_upload_10mb_is_streamed(server):
    rng = random.Random(1234)
    pieces = [rng.randbytes(64 * 1024) for _ in range(160)]
    expected = hashlib.sha256(b"".join(pieces)).hexdigest()

    def gen():
        yield from pieces

    r = httpx.post(f"{server.url}/upload", content=gen(), timeout=60)
    assert r.status_code == 200, r.text
    assert r.request.headers.get("transfer-encoding") == "chunked"
    result = r.json()
    assert result["bytes"] == 10 * MiB
    assert result["sha256"] == expected
    assert result["messages"] > 1, result
    assert result["max_message"] < 10 * MiB, result


def test_content_length_upload_10mb_is_streamed(server):
    data = random.Random(99).randbytes(10 * MiB)
    r = httpx.post(f"{server.url}/upload", content=data, timeout=60)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["bytes"] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["messages"] > 1, result
    assert result["max_message"] < len(data), result


def test_raw_chunked_upload_with_odd_chunk_sizes(server):
    rng = random.Random(7)
    sizes = [1, 2, 15, 16, 17, 4095, 65536, 100_000, 3]
    pieces = [rng.randbytes(n) for n in sizes]
    wire = b"".join(b"%X\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    conn = RawConn(server.connect())
    conn.send(request("POST", "/upload", headers=[("Transfer-Encoding", "chunked")]) + wire)
    resp = conn.read_response()
    assert resp.status == 200, resp.body
    result = json.loads(resp.body)
    assert result["bytes"] == sum(sizes)
    assert result["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
    # keep-alive after a chunked request body
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"ok"


def test_empty_upload_is_one_message(server):
    r = httpx.post(f"{server.url}/upload", content=b"", timeout=10)
    result = r.json()
    assert result == {
        "sha256": hashlib.sha256(b"").hexdigest(),
        "bytes": 0,
        "messages": 1,
        "max_message": 0,
    }


# --- downloads -------------------------------------------------------------------------------


def test_download_10mb_streamed(server):
    size = 10 * MiB
    digest = hashlib.sha256()
    total = 0
    with httpx.stream("GET", f"{server.url}/download?size={size}&chunk=65536", timeout=60) as r:
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in r.headers
        for data in r.iter_raw():
            digest.update(data)
            total += len(data)
    assert total == size
    assert digest.hexdigest() == download_sha(size, 65536)


def test_download_raw_chunk_framing(server):
    size = 3 * MiB + 12345
    conn = RawConn(server.connect())
    conn.send(request("GET", f"/download?size={size}&chunk=10000"))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.chunked
    assert len(resp.body) == size
    assert hashlib.sha256(resp.body).hexdigest() == download_sha(size, 10000)
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"ok"


# --- both ways -------------------------------------------------------------------------------


def test_echo_streams_both_ways_interleaved(server):
    """Each request chunk comes back before the next one is sent: true full-duplex streaming."""
    conn = RawConn(server.connect())
    conn.send(request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")]))
    resp = None
    for i in range(5):
        piece = f"ping-{i}-".encode() * (i + 1)
        conn.send(b"%X\r\n%s\r\n" % (len(piece), piece))
        if resp is None:
            resp = conn.read_head()
            assert resp.status == 200
            assert resp.header("transfer-encoding") == "chunked"
        got = b""
        while len(got) < len(piece):
            chunk = conn.read_chunk()
            assert chunk, "response ended early"
            got += chunk
        assert got == piece
    conn.send(b"0\r\n\r\n")
    assert conn.read_chunk() == b""
    conn.send(request("GET", "/"))
    assert conn.read_response().body == b"ok"


@pytest.mark.timeout(90)
def test_echo_10mb_full_duplex(server):
    rng = random.Random(5)
    pieces = [rng.randbytes(64 * 1024) for _ in range(160)]
    expected = hashlib.sha256(b"".join(pieces)).hexdigest()
    conn = RawConn(server.connect(), timeout=30)
    errors = []

    def writer():
        try:
            conn.send(request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")]))
            for p in pieces:
                conn.send(b"%X\r\n%s\r\n" % (len(p), p))
            conn.send(b"0\r\n\r\n")
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    t = threading.Thread(target=writer)
    t.start()
    resp = conn.read_head()
    digest = hashlib.sha256()
    total = 0
    for data in conn.iter_body(resp):
        digest.update(data)
        total += len(data)
    t.join(30)
    assert errors == []
    assert resp.status == 200
    assert total == 10 * MiB
    assert digest.hexdigest() == expected


# --- disconnects -----------------------------------------------------------------------------


def leave_before_the_response(server, markers, target: str, tag: str) -> None:
    """GET `target` and close the connection while the app works; once the server has logged
    the 499, let the app answer (tests/apps/late_response.py)."""
    with resets_on_close(socket.create_connection(("127.0.0.1", server.port), timeout=10)) as sock:
        sock.sendall(request("GET", target))
        wait_for_file(markers / f"{tag}.started", timeout=10)
    wait_for(lambda: " 499 " in server.output(), message="the 499 line", server=server)
    (markers / f"{tag}.go").write_text("")


@pytest.mark.parametrize(
    ("stream", "outcome"),
    [
        # The head and the last body reach nobody, and are dropped: the app goes on to what
        # it does after its response, as under uvicorn (it used to stop at the head).
        (
            "0",
            [
                "http.response.start: sent",
                "http.response.body: sent",
                "after the response",
            ],
        ),
        # A body with more to come is a stream for nobody: it is told (ASGI 2.4's OSError).
        ("1", ["http.response.start: sent", "http.response.body: ClientDisconnected"]),
    ],
    ids=["whole", "stream"],
)
def test_an_answer_after_the_client_left_is_dropped_and_a_stream_is_told(
    run_rsasgi, markers, stream, outcome
):
    server = run_rsasgi("late_response:app", env={"PROTO_MARKER_DIR": str(markers)})
    leave_before_the_response(server, markers, f"/late?tag=late&stream={stream}", "late")
    assert wait_for_file(markers / "late.outcome", timeout=10).splitlines() == outcome
    assert [line["status"] for line in access_log(server.output())] == ["499"]


def test_a_starlette_background_task_runs_when_the_client_left_before_the_response(
    run_rsasgi, markers
):
    """FastAPI's BackgroundTasks (Starlette's BackgroundTask) run after the response is sent:
    an endpoint slower than its client's timeout still sends its mail, as under uvicorn.
    The head used to raise ClientDisconnected, and the task never ran."""
    server = run_rsasgi("late_response:starlette_app", env={"PROTO_MARKER_DIR": str(markers)})
    leave_before_the_response(server, markers, "/slowbg?tag=bg", "bg")
    assert wait_for_file(markers / "bg.background", timeout=10) == "ran"
    assert "Traceback" not in server.output()


def test_disconnect_delivered_while_app_waits_in_receive(server, markers):
    sock = server.connect()
    sock.sendall(request("GET", "/wait-disconnect?tag=idle"))
    wait_for_file(markers / "idle.started")
    time.sleep(0.2)
    sock.close()
    types = json.loads(wait_for_file(markers / "idle.disconnect", timeout=10))
    assert types == ["http.request", "http.disconnect"]
    still_serving(server)


def test_disconnect_delivered_in_the_middle_of_the_body(server, markers):
    sock = server.connect()
    sock.sendall(request("POST", "/wait-disconnect?tag=mid", headers=[("Content-Length", "100")]))
    sock.sendall(b"0123456789")
    wait_for_file(markers / "mid.begun")
    time.sleep(0.3)
    sock.close()
    types = json.loads(wait_for_file(markers / "mid.disconnect", timeout=10))
    assert types[-1] == "http.disconnect", types
    assert set(types[:-1]) <= {"http.request"}, types
    assert not (markers / "mid.started").exists(), "a truncated body was reported as complete"
    still_serving(server)


def test_send_after_the_app_heard_the_disconnect_does_nothing(server, markers):
    """An app that got http.disconnect from receive() knows the client left, and its send()
    calls after it are dropped without raising, as uvicorn's and granian's are. Django's ASGI
    handler sends from one task while another listens: an OSError there skipped its end of
    request, and a pooled database connection was never given back. An app that does not
    listen still gets the OSError (the next test)."""
    sock = server.connect()
    sock.sendall(request("GET", "/send-after-disconnect?tag=late"))
    wait_for_file(markers / "late.started")
    time.sleep(0.2)
    sock.close()
    result = wait_for_file(markers / "late.result", timeout=10)
    assert result == "no exception", f"send() after http.disconnect raised {result}"
    still_serving(server)


def test_send_raises_oserror_when_client_leaves_mid_stream(server, markers):
    conn = RawConn(server.connect())
    conn.send(request("GET", "/stream-until-error?tag=gone"))
    resp = conn.read_head()
    assert resp.status == 200
    conn.read_chunk()
    wait_for_file(markers / "gone.started")
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.sock.close()
    result = wait_for_file(markers / "gone.result", timeout=15)
    assert result != "no exception", "send() kept succeeding after the client left"
    info = json.loads(result)
    assert info["oserror"], f"send() to a vanished client raised {info}, not an OSError"
    still_serving(server)


# --- flow control ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "app, route",
    [("proto_stream:app", "/download"), ("wsgi_stream:app", "/gen")],
    ids=["asgi", "wsgi-generator"],
)
def test_slow_reader_keeps_memory_bounded(run_rsasgi, markers, app, route):
    """200 MiB to a client that reads nothing for 3 s, then slowly, then fast: the app is held
    back (the ASGI send() waits; the WSGI pool thread waits on the generator), the server does
    not buffer, and every byte arrives in order. Both routes send block(i, chunk) for the
    i-th piece."""
    server = run_rsasgi(
        app, env={"PROTO_MARKER_DIR": str(markers), "WSGI_MARKER_DIR": str(markers)}
    )
    size = 200 * MiB
    chunk = 64 * 1024
    # warm up: imports, first allocations
    with httpx.stream("GET", f"{server.url}{route}?size={MiB}&tag=warm", timeout=30) as r:
        assert sum(len(d) for d in r.iter_raw()) == MiB
    pid = server.proc.pid
    baseline = rss_kib(pid)
    assert baseline > 0

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    conn = RawConn(sock, timeout=30)
    conn.send(request("GET", f"{route}?size={size}&chunk={chunk}&tag=slow"))
    peak = baseline

    # Phase 1: do not read at all for 3 s.
    end = time.monotonic() + 3
    while time.monotonic() < end:
        peak = max(peak, rss_kib(pid))
        time.sleep(0.1)
    progress = int(wait_for_file(markers / "slow.progress"))
    assert progress < 64 * MiB, (
        f"the app produced {progress} bytes while the client read nothing: nothing holds it back"
    )

    # Phase 2: read slowly for 2 s; phase 3: the rest as fast as possible.
    resp = conn.read_head()
    assert resp.status == 200
    sha, total, peak = read_slowly_then_fast(conn, resp, pid, peak)
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 100, f"server RSS grew by {growth_mib:.0f} MiB (baseline {baseline} KiB)"
    assert total == size
    assert sha == download_sha(size, chunk)
    still_serving(server)


# --- edges of send() (tests/apps/proto_send_edges.py) -----------------------------------------


def test_the_last_send_of_a_large_body_returns_once_the_body_is_taken(run_rsasgi):
    """A last body message over the buffer's high-water mark waits for the reactor; the
    response then ends as the reactor takes it, which is not the client leaving: send()
    returns (code after it, such as Starlette's background tasks, runs)."""
    server = run_rsasgi("proto_send_edges:app")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):
            response = client.get("/large-final")
            assert (response.status_code, len(response.content)) == (200, 200_000)
            assert client.get("/outcome").text == "returned"


def test_an_app_that_fails_after_its_start_but_before_any_body_gets_500(run_rsasgi):
    """Nothing goes out before the first body message (ASGI), so the failure is a clean 500
    rather than a 200 whose body never comes."""
    server = run_rsasgi("proto_send_edges:app")
    response = httpx.get(f"{server.url}/raise-after-start", timeout=10)
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    wait_for_log(server, "Exception in ASGI application", "(sent 500)")
    assert httpx.get(server.url, timeout=10).text == "ok"


def test_a_cancelled_receive_released_by_the_server_may_run_app_code_that_sends(run_rsasgi):
    """The server lets go of a cancelled receive() when the next one waits. If the app had
    hung code on it (a weakref.finalize) and forgot it, ours is the last reference, and that
    code runs as it goes: here it calls send(), which must not find the server holding its
    own lock (the worker would hang)."""
    server = run_rsasgi("proto_send_edges:app")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        conn = RawConn(sock)
        conn.send(request("POST", "/finalizer", [("Content-Length", "5")]))
        time.sleep(0.3)  # the app's receive() calls wait for the body
        conn.send(b"hello")
        response = conn.read_response("POST")
    assert response.status == 200, response.status_line
    assert response.body == b"from-finalizer\nbody:hello"
    assert httpx.get(f"{server.url}/finalized", timeout=10).text == "ran"


def test_a_task_waiting_in_receive_hears_of_the_disconnect_beside_a_cancelled_receive(
    run_rsasgi,
):
    """Two receive() at once: a watcher task waiting for http.disconnect, and one made and
    cancelled at once (Starlette's Request.is_disconnected, sse-starlette's pattern). The
    second must not take the first one's place."""
    server = run_rsasgi("proto_send_edges:app")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        conn = RawConn(sock)
        conn.send(request("GET", "/watch"))
        assert conn.read_head().status == 200
        conn.read_until(b"tick\n")
    wait_for(
        lambda: httpx.get(f"{server.url}/watched", timeout=10).text != "watching",
        message="the app done with /watch",
    )
    assert httpx.get(f"{server.url}/watched", timeout=10).text == "disconnect seen"


def test_a_receive_the_app_cancelled_does_not_stop_send_from_saying_the_client_left(
    run_rsasgi,
):
    """Starlette reads the body, looks once with is_disconnected() (a receive() made and
    cancelled), then streams, counting on ASGI 2.4's send() raising once the client is gone.
    That receive() used to count as listening for the disconnect for good: the sends were
    dropped, the stream ran on for nobody and held its place under --limit-concurrency."""
    server = run_rsasgi("proto_send_edges:app", "--limit-concurrency", "2")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        conn = RawConn(sock)
        conn.send(request("GET", "/checked-ticks"))
        assert conn.read_head().status == 200
        conn.read_until(b"tick\n")
    wait_for(
        lambda: httpx.get(f"{server.url}/ticked", timeout=10).text != "ticking",
        timeout=5,
        message="the streaming app done",
    )
    assert httpx.get(f"{server.url}/ticked", timeout=10).text == "stopped: ClientDisconnected"


def test_sends_that_go_nowhere_still_let_the_event_loop_run(run_rsasgi):
    """An app that listens for the disconnect through receive() (Django's ASGI handler) has
    its send() calls after the client left dropped, not raised. Each must still give the
    event loop a turn: an app streaming in a loop that awaits nothing else would otherwise
    hold the worker, and no other request would be answered."""
    server = run_rsasgi("proto_send_edges:app")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        conn = RawConn(sock)
        conn.send(request("GET", "/spin"))
        assert conn.read_head().status == 200
        conn.read_exact(1024)
    wait_for(
        lambda: " 499 " in server.output() or '"GET /spin HTTP/1.1" 200' in server.output(),
        message="the reactor done with /spin",
    )
    assert httpx.get(f"{server.url}/stop", timeout=10).text == "ok"
    wait_for(
        lambda: httpx.get(f"{server.url}/spun", timeout=10).text.startswith("stopped"),
        message="the spinning app stopped",
    )


def test_an_app_streaming_to_a_head_request_stops_once_the_head_is_out(run_rsasgi):
    """HEAD gets no body: once its head is written, the app's send() raises, so a streaming
    endpoint (SSE behind FastAPI's GET, which answers HEAD too) ends and gives back its place
    under --limit-concurrency instead of running on for nobody."""
    server = run_rsasgi("proto_send_edges:app", "--limit-concurrency", "2")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        conn = RawConn(sock)
        conn.send(request("HEAD", "/ticks"))
        assert conn.read_head().status == 200
        wait_for(
            lambda: httpx.get(f"{server.url}/ticked", timeout=10).text != "ticking",
            message="the streaming app done",
        )
    assert httpx.get(f"{server.url}/ticked", timeout=10).text == "stopped: ClientDisconnected"
