"""The web page as a hostile visitor sees it: `dmae serve` in a subprocess, driven over its HTTP API (gradio_client and
raw requests), as anyone can on a public Space.

The server offers only its own list, so a typed path, an existing folder or file, a Hub id or a released name it does
not offer all get the one refusal, on every endpoint. Values that would cost the server its memory or its time are
refused before any work; a request past the time limit stops, and so does a cancelled one, and the next visitor is
served. sigma follows the library's rule, with its messages.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from dmae_hf import defaults
from dmae_hf.hub.names import packaged_path
from dmae_hf.web import REFUSED, Limits, ServerSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
CAT = REPO_ROOT / "dmae_hf" / "assets" / "cifar10" / "test_00003_cat.png"
MAX_SECONDS = 2
REST = {"denoiser": "none", "sigma": None, "override": False, "n": 100, "alpha": 0.001, "method": "cohen"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HOME": str(tmp_path_factory.mktemp("hf_home"))}
    command = [sys.executable, "-m", "dmae_hf.cli", "serve", "--port", str(port), "--max-seconds", str(MAX_SECONDS)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            raise AssertionError(f"dmae serve exited with {process.returncode}: {process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                break
        except OSError:
            assert time.monotonic() < deadline, "dmae serve did not answer within 90 s"
            time.sleep(0.3)
    try:
        yield url, Client(url, verbose=False), process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def certify(client, image=CAT, model=defaults.EMBEDDED_MODEL, **kwargs):
    """The answer text of the /certify endpoint, and the seconds it took."""
    values = {**REST, **kwargs}
    start = time.perf_counter()
    answer = client.predict(handle_file(str(image)) if image else None, model, values["denoiser"], values["sigma"],
                            values["override"], values["n"], values["alpha"], values["method"], api_name="/certify")[0]
    return answer, time.perf_counter() - start


def raw_call(url, api, body: str) -> str:
    """POST a raw JSON body (NaN, huge literals, files by server path) and return the event stream's text."""
    request = urllib.request.Request(f"{url}gradio_api/call/{api}", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{api}/{event}", timeout=60) as response:
        return response.read().decode()


# ------------------------------------------------------------------------------------------------- the server's lists
TYPED = ["../../..", "/etc", "/etc/passwd", "/no/such/folder", "dmae-vit-base-sigma0.25", "someone/some-model",
         str(packaged_path(defaults.EMBEDDED_MODEL)), str(packaged_path(defaults.EMBEDDED_MODEL).parent / "nope"),
         "", "DMAE-TINY-CIFAR10"]


def test_anything_outside_the_list_gets_one_refusal_on_every_endpoint(server):
    url, client, _ = server
    answers = set()
    for value in TYPED:
        answers.add(certify(client, model=value)[0])
        answers.add(certify(client, denoiser=value)[0])
        sigma_update, message = client.predict(value, "none", api_name="/choose")
        answers.add(message)
        answers.add(client.predict(defaults.EMBEDDED_MODEL, value, api_name="/choose")[1])
    assert answers == {f"**Error:** {REFUSED}"}  # the same whether the path exists, loads, or is nothing at all
    # the offered ones pass: the clean ViT behind the shipped denoiser takes the denoiser's sigma
    sigma_update, message = client.predict("vit-tiny-cifar10-clean", "dmae-tiny-cifar10-denoiser", api_name="/choose")
    assert message == "" and sigma_update["value"] == 0.25
    # a file by its place on the server is refused by gradio before our code, the same for a file that exists or not
    events = {raw_call(url, "certify", json.dumps({"data": [{"path": path, "meta": {"_type": "gradio.FileData"}},
                                                            defaults.EMBEDDED_MODEL, *REST.values()]}))
              for path in ("/etc/passwd", "/etc/no-such-file", str(CAT.parent / "none.png"))}
    assert len(events) == 1 and "event: error" in events.pop()


def test_the_server_decides_its_lists_at_start(tmp_path, monkeypatch):
    settings = ServerSettings.build(environ={})
    assert list(settings.models) == ["dmae-tiny-cifar10", "vit-tiny-cifar10-clean"]
    assert list(settings.denoisers) == ["dmae-tiny-cifar10-denoiser"]
    assert "dmae-vit-base-sigma0.25" in settings.unavailable and "dmae publish" in settings.unavailable[
        "dmae-vit-base-sigma0.25"]
    with pytest.raises(ValueError, match=REFUSED):
        settings.source(str(packaged_path(defaults.EMBEDDED_MODEL)))
    # the operator adds a local folder (offered under the name given) and a Hub id that cannot be had offline
    folder = tmp_path / "my-model"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    settings = ServerSettings.build(environ={"DMAE_SERVE_MODELS": f"{folder}, someone/vit",
                                             "DMAE_SERVE_MAX_SECONDS": "5", "DMAE_SERVE_CONCURRENCY": "2"})
    assert settings.source(str(folder)) == str(folder.resolve()) and settings.selected == str(folder)
    assert "someone/vit" not in settings.models and "HF_HUB_OFFLINE" in settings.unavailable["someone/vit"]
    assert settings.limits == Limits(max_seconds=5.0, concurrency=2)
    with pytest.raises(ValueError, match="neither an existing folder nor a Hub id"):
        ServerSettings.build(models=[str(tmp_path / "missing")], environ={})
    with pytest.raises(ValueError, match=r"max_seconds \(--max-seconds, \$DMAE_SERVE_MAX_SECONDS\) must be"):
        Limits(max_seconds=float("nan"))


# ------------------------------------------------------------------------------------------------- the server's cost
def test_huge_and_malformed_values_are_refused_before_any_work(server):
    url, client, process = server
    for n in (10**12, 10**300):
        answer, seconds = certify(client, n=n)
        assert "n is over this server's limit" in answer and "at most 20,000 noisy samples" in answer, answer
        assert seconds < 10
    answer, _ = certify(client, sigma=5)
    with pytest.raises(ValueError) as library:
        defaults.check_sigma(5)
    assert answer == f"**Error:** {library.value}"  # the library's rule and message
    answer, _ = certify(client, sigma=0.3)
    assert "This model was trained for sigma = 0.25, not 0.3" in answer
    # NaN, infinities, 400-digit numbers, strings and lists over raw HTTP: an error each, and the server lives on
    for data in ('null, "dmae-tiny-cifar10", "none", NaN, false, NaN, NaN, "cohen"',
                 'null, "dmae-tiny-cifar10", "none", 1e400, false, 1e999, -1e400, "cohen"',
                 'null, "dmae-tiny-cifar10", "none", null, false, ' + "9" * 400 + ', 0.001, "cohen"',
                 'null, ["../.."], {"path": "/etc"}, "x", "yes", [1], {"a": 2}, "cohen"'):
        events = raw_call(url, "certify", '{"data": [' + data + "]}")
        assert "event: error" in events or "**Error:**" in events, events
    assert process.poll() is None
    assert "Prediction: cat" in certify(client)[0]


def test_an_overlong_request_stops_and_the_next_visitor_is_served(server):
    _, client, _ = server
    answer, seconds = certify(client, n=19_000)  # ~20,000 samples: well over 2 s on any CPU
    assert f"Stopped after {MAX_SECONDS} s, this server's time limit per request" in answer, answer
    assert seconds < MAX_SECONDS + 15  # stopped within a noisy batch of the limit
    answer, seconds = certify(client)
    assert "Prediction: cat" in answer and seconds < 15



def test_cancelling_stops_the_work_at_once(tmp_path):
    """In-process, with a time limit that would not stop it: Cancel (here `/cancel` through gradio_client) ends the
    sampling itself, not only the visitor's wait, so nothing runs on after it."""
    from dmae_hf.web import build_app, launch
    from dmae_hf.web.certifier import load_smoothed

    app = build_app(ServerSettings.build(environ={}, max_seconds=600))
    launch(app, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(app.local_url, verbose=False)
        assert "Prediction: cat" in certify(client)[0]
        g = load_smoothed(str(packaged_path(defaults.EMBEDDED_MODEL)), None, 0.25, False)
        batches = []
        g.register_forward_hook(lambda *_: batches.append(time.monotonic()))
        job = client.submit(handle_file(str(CAT)), defaults.EMBEDDED_MODEL, "none", None, False, 19_000, 0.001,
                            "cohen", api_name="/certify")
        while not batches:
            time.sleep(0.05)
        job.cancel()
        cancelled = time.monotonic()
        answer, seconds = certify(client)
        assert "Prediction: cat" in answer and seconds < 15, (answer, seconds)
        time.sleep(1.0)
        after = [t for t in batches if t > cancelled]
        done = len(batches)
        time.sleep(1.0)
        assert len(batches) == done  # no work left running
        assert len(after) < 19_100 // 250  # the cancelled request did not run to its end
    finally:
        app.close()


def test_the_page_shows_its_limits(server):
    url, _, _ = server
    with urllib.request.urlopen(f"{url}config", timeout=10) as response:
        config = response.read().decode()
    assert f"at most 20,000 noisy samples (n0 + n) and {MAX_SECONDS} s of sampling per request" in config
