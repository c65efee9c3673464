"""A service private by default: a token off loopback, 401 without it, headers that keep answers
out of caches, answers that expire, TLS, the page's token prompt, and a clean SIGTERM."""

import io
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image
from serve_support import (
    CONFIG,
    OPTS,
    ROOT,
    build_predictor,
    free_port,
    serve_in_thread,
)
from support import require

from dental_d2.serving import PredictionService, create_app, security
from dental_d2.serving.answer_cache import AnswerCache
from dental_d2.serving.security import content_security_policy

SERVE_TOOL = os.path.join(ROOT, "tools", "serve.py")
TOKEN = "s3cret-token-for-the-tests-0123456789"
ALL_ENDPOINTS = ["/model", "/results/abc", "/results/abc/overlay.png", "/results/abc/coco.json",
                 "/openapi.json", "/no-such-page"]  # fmt: skip


def png_bytes(size=(48, 64), seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def predictor():
    return build_predictor()


@pytest.fixture
def private_client(predictor):
    service = PredictionService(predictor, config_file=CONFIG)
    with TestClient(create_app(service, token=TOKEN)) as client:
        yield client


def _bearer(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def test_with_a_token_everything_but_health_and_the_page_needs_it(private_client, monkeypatch):
    compared = []
    real_compare = security.hmac.compare_digest
    monkeypatch.setattr(
        security.hmac, "compare_digest", lambda a, b: compared.append(1) or real_compare(a, b)
    )
    assert private_client.get("/health").status_code == 200
    assert private_client.get("/").status_code == 200  # the page, where the token is typed
    wrong = [{}, _bearer("s3cret-token-for-the-tests-012345678X"), _bearer(""),
             {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}]  # fmt: skip
    for headers in wrong:
        for path in ALL_ENDPOINTS:
            response = private_client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert response.json() == {
                "error": "this server needs its token: send Authorization: Bearer <token>"
            }
        posted = private_client.post("/predict", headers=headers, files={"file": png_bytes()})
        assert posted.status_code == 401
    assert compared, "the token is compared with hmac.compare_digest"
    assert private_client.get("/model", headers=_bearer()).json()["classes"]
    answer = private_client.post("/predict", headers=_bearer(), files={"file": png_bytes()})
    assert answer.status_code == 200
    result = private_client.get(f"/results/{answer.json()['id']}", headers=_bearer())
    assert result.status_code == 200 and result.json()["id"] == answer.json()["id"]


def test_every_answer_is_uncacheable_and_the_page_may_load_nothing_from_outside(private_client):
    page = private_client.get("/").text
    policy = content_security_policy(page)
    responses = [private_client.get(path) for path in ("/", "/health", "/model", "/nope")]
    responses.append(private_client.get("/model", headers=_bearer()))
    responses.append(private_client.get("/results/unknown", headers=_bearer()))
    assert [r.status_code for r in responses] == [200, 200, 401, 401, 200, 404]
    for response in responses:
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Security-Policy"] == policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert policy.startswith("default-src 'none'; script-src 'sha256-")
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    for loose in ("unsafe-inline", "unsafe-eval", "http", "*"):
        assert loose not in policy
    # One hash each: the page's own script and style blocks.
    assert policy.count("'sha256-") == 2


def test_answers_expire_after_keep_minutes_as_well_as_by_count(predictor):
    now = [1000.0]
    service = PredictionService(predictor, keep_seconds=600, clock=lambda: now[0], cache_size=3)
    with TestClient(create_app(service)) as client:
        first = client.post("/predict", files={"file": png_bytes()}).json()["id"]
        now[0] += 599
        assert client.get(f"/results/{first}").status_code == 200
        second = client.post("/predict", files={"file": png_bytes(seed=1)}).json()["id"]
        now[0] += 2  # the first is 601 s old, the second 2 s
        assert client.get(f"/results/{first}").status_code == 404
        assert client.get(f"/results/{second}").status_code == 200
        assert client.get("/model").json()["keep_minutes"] == 10
        # By count too: 3 kept, the oldest dropped.
        later = [client.post("/predict", files={"file": png_bytes(seed=s)}).json()["id"]
                 for s in range(2, 5)]  # fmt: skip
        assert client.get(f"/results/{second}").status_code == 404
        assert all(client.get(f"/results/{i}").status_code == 200 for i in later)


class _Answer:
    def __init__(self, size):
        self.size = size

    def nbytes(self):
        return self.size


def test_answers_are_bounded_by_bytes_least_recently_used_first():
    now = [0.0]
    cache = AnswerCache(max_answers=10, max_bytes=100, keep_seconds=60, clock=lambda: now[0])
    for key in "abc":
        cache.add(key, _Answer(30))
    cache.get("a")  # read: b is now the least recently used
    cache.add("d", _Answer(30))  # 120 bytes would be over 100
    with pytest.raises(KeyError):
        cache.get("b")
    assert [cache.get(key).size for key in "acd"] == [30, 30, 30]
    cache.add("huge", _Answer(101))  # over the whole budget: not kept, the others stay
    with pytest.raises(KeyError):
        cache.get("huge")
    now[0] = 60.0  # reading "a" did not make it younger
    with pytest.raises(KeyError):
        cache.get("a")


def test_an_upload_is_never_written_outside_its_spooled_temporary_file(predictor, tmp_path):
    # Over starlette's 1 MB spooling limit, so the upload does go to a temporary file.
    big = png_bytes(size=(700, 700))
    assert len(big) > 1 << 20
    spool = tmp_path / "spool"
    spool.mkdir()
    before = set(os.listdir(ROOT))
    service = PredictionService(predictor)
    seen_during = []
    real_decode = service.decode

    def decode(data, name):
        seen_during.append(sorted(os.listdir(spool)))
        return real_decode(data, name)

    service.decode = decode
    previous, tempfile.tempdir = tempfile.tempdir, str(spool)
    try:
        with TestClient(create_app(service)) as client:
            assert client.post("/predict", files={"file": ("x.png", big)}).status_code == 200
    finally:
        tempfile.tempdir = previous
    # The spooled file is an unnamed temporary file: no name to find, gone with the request.
    assert seen_during == [[]] and os.listdir(spool) == []
    assert set(os.listdir(ROOT)) == before


def _serve_main(tool, argv, capsys):
    status = tool.main(["--config-file", CONFIG, *argv, *OPTS])
    return status, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--host", "0.0.0.0"], {}, "error: --host 0.0.0.0 lets anyone who reaches this port "
         "send and see patient images: pass --token-file FILE (or set $DENTAL_D2_TOKEN), or "
         "--insecure-no-auth to serve without authentication"),
        (["--host", "192.168.1.20"], {}, "error: --host 192.168.1.20 lets anyone"),
        (["--host", "0.0.0.0", "--token-file", "/nonexistent/token"], {},
         "error: --token-file /nonexistent/token: cannot be read (No such file or directory)"),
        (["--host", "0.0.0.0"], {"DENTAL_D2_TOKEN": "short"},
         "error: $DENTAL_D2_TOKEN: the token must be one word of at least 16 characters"),
        (["--insecure-no-auth"], {"DENTAL_D2_TOKEN": TOKEN}, "error: --insecure-no-auth and a "
         "token (--token-file or $DENTAL_D2_TOKEN) contradict each other"),
        (["--ssl-certfile", "cert.pem"], {}, "error: --ssl-certfile needs --ssl-keyfile too"),
        (["--keep-minutes", "0"], {}, "error: --keep-minutes 0.0: must be above 0"),
    ],
)  # fmt: skip
def test_serve_refuses_unsafe_settings_in_one_line(
    argv, env, message, capsys, monkeypatch, load_tool
):
    def serve(*args, **kwargs):
        raise AssertionError("the server would start")

    monkeypatch.setattr(uvicorn, "run", serve)
    monkeypatch.delenv("DENTAL_D2_TOKEN", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status, err = _serve_main(load_tool("serve"), argv, capsys)
    assert status == 1 and err.startswith(message) and "\n" not in err, err


def _start_server(tmp_path, *argv, env=None):
    # tools/serve.py refuses a model without weights: a checkpoint of the test model.
    weights = tmp_path / "model_final.pth"
    torch.save({"model": build_predictor().model.state_dict()}, weights)
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (the child writes to it)
    process = subprocess.Popen(
        [sys.executable, SERVE_TOOL, "--config-file", CONFIG, *argv, *OPTS,
         "MODEL.WEIGHTS", str(weights)],
        cwd=ROOT, stdout=log, stderr=log, env=env,
    )  # fmt: skip
    log.close()
    return process


def _wait_until_up(process, url, tmp_path, **kwargs):
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=2, **kwargs).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the server did not start")


def _stop(process):
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_serve_tool_over_tls_with_a_token_file(tmp_path):
    openssl = shutil.which("openssl")
    require(openssl is not None, "openssl not installed (it makes the test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
         "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    token = secrets.token_urlsafe(32)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DENTAL_D2_TOKEN"}
    process = _start_server(
        tmp_path, "--port", str(port), "--token-file", str(token_file),
        "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), env=env,
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=str(cert))
    try:
        _wait_until_up(process, url, tmp_path, verify=verify)
        assert httpx.get(f"{url}/model", verify=verify).status_code == 401
        model = httpx.get(
            f"{url}/model", verify=verify, headers={"Authorization": f"Bearer {token}"}
        )
        assert model.status_code == 200 and model.headers["Cache-Control"] == "no-store"
        with pytest.raises(httpx.HTTPError):  # plain http on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        _stop(process)


def _multipart(data: bytes, boundary="dental-d2-test-boundary") -> tuple[bytes, str]:
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()  # fmt: skip
    return head + data + f"\r\n--{boundary}--\r\n".encode(), boundary


@pytest.mark.slow
def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path):
    port = free_port()
    process = _start_server(tmp_path, "--port", str(port))
    try:
        _wait_until_up(process, f"http://127.0.0.1:{port}", tmp_path)
        body, boundary = _multipart(png_bytes())
        head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
        with socket.create_connection(("127.0.0.1", port), timeout=60) as upload:
            # Half the upload is sent when the signal comes: the request is in flight.
            upload.sendall(head + body[: len(body) // 2])
            time.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while True:  # the server stops accepting connections first
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except OSError:
                    break
                assert time.monotonic() < deadline, "the server still accepts connections"
                time.sleep(0.1)
            upload.sendall(body[len(body) // 2 :])
            answer = b""
            while chunk := upload.recv(65536):
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 200 OK", answer[:500]
        assert b'"instances":' in rest and b'"file_name":"a.png"' in rest
        assert process.wait(timeout=60) == 0, (tmp_path / "server.log").read_text()[-3000:]
    finally:
        _stop(process)


@pytest.fixture
def private_server_url(predictor):
    service = PredictionService(predictor, config_file=CONFIG, score_threshold=0.5)
    with serve_in_thread(create_app(service, token=TOKEN)) as url:
        yield url


@pytest.mark.slow
def test_page_asks_for_the_token_once_and_keeps_it_for_the_tab(
    private_server_url, browser, tmp_path
):
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(size=(96, 128)))
    context = browser.new_context()
    try:
        page = context.new_page()
        blocked = []
        page.on("console", lambda m: "Content Security Policy" in m.text and blocked.append(m))
        page.goto(private_server_url)
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#token", "a-wrong-token-of-enough-length")
        page.click("#login button")
        page.wait_for_selector("#login-message:has-text('refused this token')")
        page.fill("#token", TOKEN)
        page.click("#login button")
        page.wait_for_selector("#model-info[data-loaded]")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector('body[data-state="ready"]', timeout=60_000)
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename == "photo.predictions.coco.json"
        # The same tab keeps the token across a reload; nothing is kept beyond it.
        page.reload()
        page.wait_for_selector("#model-info[data-loaded]")
        assert page.is_hidden("#login")
        assert page.evaluate("localStorage.length") == 0 and context.cookies() == []
        other = context.new_page()
        other.goto(private_server_url)
        other.wait_for_selector("#login:not([hidden])")
        assert not blocked, [m.text for m in blocked]
    finally:
        context.close()
