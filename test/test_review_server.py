"""The gender review server against malformed and cut-off requests, closing clients and bad arguments, and the
review page's details in a real browser. A synthetic work folder (drawn images, fixed votes): no dataset needed."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.annotate_gender import consensus, review

# P(male) of 3 classifiers per face; all but the last disagree and are queued. Face 1 (queue index 0) has a
# female vote of 0.4958, which two decimals would show as 0.50.
VOTES = np.array([[0.9, 0.4958, 0.7], [0.1, 0.8, 0.3], [0.6, 0.4, 0.9], [0.3, 0.6, 0.2], [0.9, 0.8, 0.95]])
BOXES = [[60.0, 40.0, 140.0, 150.0], [30.0, 20.0, 100.0, 110.0], None, [10.5, 12.0, 90.0, 100.0],
         [50.0, 50.0, 120.0, 130.0]]


@pytest.fixture
def workdir(tmp_path):
    """A work folder with 4 queued faces (drawn JPEGs; face 3 has no detected box) and one saved answer."""
    images = tmp_path / "images"
    images.mkdir()
    paths = []
    for i, box in enumerate(BOXES):
        image = np.full((200, 180, 3), 40 * i, np.uint8)
        if box is not None:
            cv2.rectangle(image, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), (200, 180, 160), -1)
        paths.append(str(images / f"{i + 1}.jpg"))
        assert cv2.imwrite(paths[-1], image)
    work = tmp_path / "work"
    summary = consensus.write_labels(work, ["a", "b", "c"], ["train"] * 5, [Path(p).name for p in paths], paths,
                                     VOTES, root=str(images), boxes=BOXES)
    assert summary["queued"] == 4
    queue = consensus.read_queue(work)["items"]
    consensus.AnswerLog(work / consensus.ANSWERS_FILE).append(queue[0], "female")
    return work


@pytest.fixture
def server(workdir):
    server = review.make_server(workdir, "127.0.0.1", 0, timeout=1.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _answers(workdir: Path) -> bytes:
    return (workdir / consensus.ANSWERS_FILE).read_bytes()


def _raw(server, data: bytes, shut_write: bool = True, wait: float = 10.0) -> bytes:
    """Send raw bytes to the server (127.0.0.1 only), optionally close the write side, and read the whole reply."""
    port = server.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            reply += chunk
    return reply


def _status(reply: bytes) -> int | None:
    if not reply.startswith(b"HTTP/"):
        return None  # no reply at all
    return int(reply.split(b" ", 2)[1])


def _post(server, body: bytes, length=None, content_type: str = "application/json", shut_write: bool = True,
          wait: float = 10.0) -> bytes:
    port = server.server_address[1]
    head = f"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return _raw(server, head.encode("latin-1") + b"\r\n" + body, shut_write=shut_write, wait=wait)


def test_index_must_be_a_real_integer(workdir, server):
    before = _answers(workdir)
    for index in ("true", "false", "0.0", "1.0", '"0"', "null", "[0]", '{"i": 0}', "1e0", "NaN", "Infinity"):
        body = f'{{"index": {index}, "answer": "skip"}}'.encode()
        reply = _post(server, body, len(body))
        assert _status(reply) == 400, (index, reply)
        assert _answers(workdir) == before, index  # face 1's "female" is still the only answer
    for body in (b'[0, "skip"]', b'"index"', b"0", b'{"index": 0}', b'{"answer": "skip"}',
                 b'{"index": 0, "answer": ["skip"]}', b'{"index": 0, "answer": null}', b"\xff\xfe{"):
        assert _status(_post(server, body, len(body))) == 400, body
        assert _answers(workdir) == before, body
    body = b'{"index": 99, "answer": "skip"}'
    assert _status(_post(server, body, len(body))) == 404
    assert _answers(workdir) == before
    assert consensus.AnswerLog(workdir / consensus.ANSWERS_FILE).read() == {"train/1.jpg": "female"}
    body = b'{"index": 1, "answer": "male"}'
    reply = _post(server, body, len(body))
    assert _status(reply) == 200 and json.loads(reply.split(b"\r\n\r\n", 1)[1])["answered"] == 2


def test_cut_off_body_is_never_saved(workdir, server):
    before = _answers(workdir)
    body = b'{"index":0,"answer":"skip"}'
    assert len(body) == 27
    # Declares 100 bytes, sends 27 and closes its write side: an error reply, nothing saved.
    reply = _post(server, body, 100)
    assert _status(reply) != 200 and _status(reply) == 400, reply
    assert _answers(workdir) == before
    # Sends 27 of 100 bytes and stalls: the read times out (1 s here), nothing is saved, the handler is freed.
    started = time.monotonic()
    reply = _post(server, body, 100, shut_write=False, wait=15.0)
    assert _status(reply) == 408 and b"body not received within" in reply, reply
    assert time.monotonic() - started < 10
    assert _answers(workdir) == before
    # A request whose headers never end is dropped after the time limit too.
    started = time.monotonic()
    reply = _raw(server, b"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\n", shut_write=False, wait=15.0)
    # http.server drops a request whose headers time out without a reply: the connection is closed, promptly.
    assert reply == b"" and time.monotonic() - started < 10, reply
    assert _answers(workdir) == before
    # The server still answers afterwards.
    body = b'{"index": 2, "answer": "skip"}'
    assert _status(_post(server, body, len(body))) == 200
    assert _answers(workdir) != before


def test_bad_content_length_is_400(workdir, server):
    before = _answers(workdir)
    body = b'{"index": 0, "answer": "skip"}'
    for length in ("abc", "-5", "1e3", "0x1e", "\xb2", "", "30, 30", "99999999999999999999"):
        reply = _post(server, body, length)
        assert _status(reply) in (400, 413), (length, reply)
        assert _answers(workdir) == before, length
    reply = _post(server, body, None)  # no Content-Length at all
    assert _status(reply) in (400, 411), reply
    reply = _post(server, body, 5000)  # more than an answer can be
    assert _status(reply) in (400, 413), reply
    port = server.server_address[1]
    twice = (f"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(body)}\r\nContent-Length: 5\r\n\r\n").encode() + body
    assert _status(_raw(server, twice)) == 400
    assert _answers(workdir) == before


def test_odd_paths_are_404_not_a_traceback(workdir, server, capfd):
    port = server.server_address[1]
    for path in ("/api/item/\xb2", "/image/\xb2", "/api/item/-1", "/api/item/4", "/image/1.5"):
        reply = _raw(server, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode("latin-1"))
        assert _status(reply) == 404, (path, reply)
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_that_closes_early_leaves_no_traceback(workdir, server, capfd, caplog):
    """The reply is written after the client has reset the connection (held back by the state lock):
    BrokenPipeError / ConnectionResetError in the handler, logged as at most one quiet line."""
    port = server.server_address[1]
    state = server.RequestHandlerClass.review
    for _ in range(3):
        with state._lock:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            time.sleep(0.2)  # the handler has read the request and waits for the lock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()  # RST
            time.sleep(0.2)
    time.sleep(0.5)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err
    assert len([r for r in caplog.records if r.name == review.__name__ and r.levelno >= 20]) <= 3
    assert all(r.levelno <= 20 for r in caplog.records if r.name == review.__name__)
    assert _status(_raw(server, f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())) == 200


def _agegender(*args):
    """`agegender ARGS` in this process: (exit code, stderr). argparse's own errors exit through SystemExit."""
    from agegender_ros.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue()


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "abc", "8.5", ""])
def test_bad_port_is_a_one_line_error(workdir, port):
    code, err = _agegender("annotate-gender", "review", "--workdir", workdir, f"--port={port}")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--port" in lines[0], err
    assert "Traceback" not in err


def test_review_items_carry_the_face_box(workdir, tmp_path):
    state = review.ReviewState(workdir)
    item = state.item(0)
    assert item["box"] == BOXES[0] and item["detected"] is True
    assert state.item(2)["box"] is None and state.item(2)["detected"] is False
    # A work folder from before boxes were stored still loads; its items have no box.
    queue = json.loads((workdir / consensus.QUEUE_FILE).read_text())
    for entry in queue["items"]:
        entry.pop("box"), entry.pop("detected")
    old = tmp_path / "old"
    old.mkdir()
    (old / consensus.QUEUE_FILE).write_text(json.dumps(queue))
    item = review.ReviewState(old).item(0)
    assert item["box"] is None and item["detected"] is None


# --- the page in a real browser --------------------------------------------------------------------------------


def _chromium():
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def test_review_page_details_in_a_real_browser(workdir, server, tmp_path):
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium found (.ci/run installs Debian's chromium; or set $CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    from test_annotate_gender import CHROMIUM_ARGS

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 800, "height": 640})
            page.goto(review.url_of(server))
            where = page.locator("#where")
            sync_api.expect(where).to_contain_text("face 2 of 4")  # the first unanswered face
            page.keyboard.press("b")
            sync_api.expect(where).to_contain_text("face 1 of 4")
            rows = page.locator("#votes tbody tr")
            assert rows.count() == 3
            # The female vote's probability is shown below 0.5 and its bar in the female colour.
            female = rows.nth(1)
            assert female.locator("td").nth(1).inner_text() == "female"
            shown = female.locator("td").nth(2).inner_text().strip()
            assert float(shown) < 0.5 and shown.startswith("0.49"), shown
            def colour(row):
                return row.locator(".bar").evaluate("e => getComputedStyle(e).backgroundColor")

            male_colour = colour(rows.nth(0))
            assert colour(female) != male_colour and colour(rows.nth(2)) == male_colour
            # The detected face box is drawn where the face is in the (scaled) photo.
            page.wait_for_function("document.getElementById('image').naturalWidth > 0")
            box = page.locator("#box")
            sync_api.expect(box).to_be_visible()
            image = page.locator("#image").bounding_box()
            drawn = box.bounding_box()
            scale = min(image["width"] / 180, image["height"] / 200)
            left = image["x"] + (image["width"] - 180 * scale) / 2
            top = image["y"] + (image["height"] - 200 * scale) / 2
            assert drawn["x"] == pytest.approx(left + 60 * scale, abs=3)
            assert drawn["y"] == pytest.approx(top + 40 * scale, abs=3)
            assert drawn["width"] == pytest.approx(80 * scale, abs=4)
            assert drawn["height"] == pytest.approx(110 * scale, abs=4)
            page.screenshot(path=str(tmp_path / "face1.png"))
            page.keyboard.press("n")
            sync_api.expect(where).to_contain_text("face 2 of 4")
            page.keyboard.press("n")
            sync_api.expect(where).to_contain_text("face 3 of 4")  # no detected face: no box, a note
            sync_api.expect(box).to_be_hidden()
            sync_api.expect(page.locator("#boxnote")).to_contain_text("no face")
            # Answer the rest; N on the finished screen opens face 1.
            for answered, key in enumerate(("m", "f", "s"), 2):
                page.keyboard.press(key)
                sync_api.expect(page.locator("#progress")).to_have_text(f"{answered} of 4 answered")
            sync_api.expect(page.locator("#done")).to_be_visible()
            page.screenshot(path=str(tmp_path / "done.png"))
            page.keyboard.press("n")
            sync_api.expect(where).to_contain_text("face 1 of 4")
            page.keyboard.press("n")
            sync_api.expect(where).to_contain_text("face 2 of 4")
            if os.environ.get("REVIEW_SCREENSHOTS"):
                for name in ("face1.png", "done.png"):
                    shutil.copy(tmp_path / name, Path(os.environ["REVIEW_SCREENSHOTS"]) / name)
        finally:
            browser.close()
