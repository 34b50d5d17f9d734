"""Reaching the Hub (`dmae_hf.hub.reach`): offline or unreachable is found once and fast, and every Hub id, short name
or dataset id that cannot be fetched fails within 3 s with one line, while cached repositories still load."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import hub_server
import pytest
from conftest import REPO_ROOT
from hub_server import FakeHub
from transformers import AutoConfig, AutoImageProcessor

from dmae_hf import DMAEConfig, DMAEForSmoothedClassification, DMAEImageProcessor
from dmae_hf.hub import names as hub_names
from dmae_hf.hub import reach


def closed_port_endpoint() -> str:
    """A loopback endpoint nobody listens on: the port was bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def hub_at(monkeypatch, tmp_path):
    def configure(endpoint, offline=False):
        hub_server.point_client_at(monkeypatch, endpoint, tmp_path / "cache", offline=offline)
        monkeypatch.delenv(hub_names.NAMESPACE_ENV, raising=False)
        for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.delenv(var, raising=False)

    return configure


# ------------------------------------------------------------------------------------------------------ the probe
def test_offline_mode_decides_without_a_probe(hub_at, monkeypatch):
    hub_at(closed_port_endpoint(), offline=True)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed in offline mode"))
    assert reach.hub_unreachable_reason() == "HF_HUB_OFFLINE=1 is set"


def test_one_probe_per_process_and_endpoint(hub_at, monkeypatch):
    calls = []
    real = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda address, **k: calls.append(address) or real(address, **k))
    with FakeHub() as hub:
        hub_at(hub.endpoint)
        assert [reach.hub_unreachable_reason() for _ in range(3)] == [None] * 3
        assert calls == [("127.0.0.1", int(hub.endpoint.rsplit(":", 1)[1]))]
    endpoint = closed_port_endpoint()
    hub_at(endpoint)
    reasons = {reach.hub_unreachable_reason() for _ in range(3)}
    assert reasons == {f"the Hub at {endpoint} cannot be reached (connection refused)"} and len(calls) == 2


def test_an_unanswered_probe_gives_up_in_time(hub_at, monkeypatch):
    """A connection (or a name resolution) that hangs: the probe answers after CONNECT_TIMEOUT, not when it ends."""
    hub_at("https://huggingface.co")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(5) or socket.socket())
    start = time.monotonic()
    reason = reach.hub_unreachable_reason()
    assert time.monotonic() - start < reach.CONNECT_TIMEOUT + 1.0
    assert reason == "huggingface.co cannot be reached (no answer within 1.5 s)"


def test_a_host_that_does_not_resolve(hub_at):
    hub_at("https://no-such-host.invalid")
    reason = reach.hub_unreachable_reason()
    assert reason == ("the Hub at https://no-such-host.invalid cannot be reached (its host name does not resolve: no "
                      "network or no DNS)")


def test_a_proxy_is_probed_instead_of_the_endpoint(hub_at, monkeypatch):
    hub_at("https://huggingface.co")
    proxy = closed_port_endpoint()
    monkeypatch.setenv("https_proxy", proxy)
    assert reach.hub_unreachable_reason() == f"huggingface.co cannot be reached through its proxy {proxy} " \
                                             "(connection refused)"


def test_require_hub_and_datasets(hub_at, monkeypatch, tmp_path):
    endpoint = closed_port_endpoint()
    hub_at(endpoint)
    with pytest.raises(reach.HubUnreachableError) as info:
        reach.require_hub("Model 'org/name'", "Pass a local directory.")
    assert str(info.value) == (f"Model 'org/name' needs the Hugging Face Hub, and the Hub at {endpoint} cannot be "
                               "reached (connection refused). Pass a local directory.")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    with pytest.raises(reach.HubUnreachableError, match=r"^Dataset 'uoft-cs/cifar10' needs the Hugging Face Hub, and "
                       r"the Hub at .* \(connection refused\)\. Pass image files or a folder instead, or a local copy "
                       r"of the dataset in the Hub layout \(.*`hf download uoft-cs/cifar10 --repo-type dataset"):
        reach.require_hub_dataset("uoft-cs/cifar10")
    (tmp_path / "datasets" / "uoft-cs___cifar10" / "plain_text").mkdir(parents=True)  # a prepared copy in the cache
    with pytest.raises(reach.HubUnreachableError, match=r"A copy is in the datasets cache: set HF_HUB_OFFLINE=1"):
        reach.require_hub_dataset("uoft-cs/cifar10")
    hub_at(endpoint, offline=True)
    reach.require_hub_dataset("uoft-cs/cifar10")  # offline with a cached copy: datasets reads the cache
    with pytest.raises(reach.HubUnreachableError, match=r"'someone/other' needs .*HF_HUB_OFFLINE=1 is set\. Pass"):
        reach.require_hub_dataset("someone/other")
    with FakeHub() as hub:
        hub_at(hub.endpoint)
        reach.require_hub("Model 'org/name'", "unused")  # reachable: nothing raised
        reach.require_hub_dataset("someone/other")


# ------------------------------------------------------------------------------- loading with the Hub unreachable
UNREACHABLE_CLIENT = textwrap.dedent('''
    import json, sys, time
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
    from dmae_hf import DMAEForSmoothedClassification
    from dmae_hf.hub.reach import require_hub_dataset

    routes = {
        "short name": lambda: DMAEForSmoothedClassification.from_pretrained("dmae-vit-large"),
        "Hub id": lambda: AutoModelForImageClassification.from_pretrained("someone/some-vit"),
        "processor": lambda: AutoImageProcessor.from_pretrained("someone/some-vit"),
        "pipeline": lambda: pipeline("certified-image-classification", model="dmae-vit-base-sigma0.25"),
        "dataset": lambda: require_hub_dataset("uoft-cs/cifar10"),
        "shipped": lambda: [AutoModelForImageClassification.from_pretrained(name) for name in
                            ("vit-tiny-cifar10-clean", "dmae-tiny-cifar10")],
    }
    report = {}
    for route, load in routes.items():
        start = time.monotonic()
        try:
            load()
            report[route] = ["loaded", 0.0]
        except Exception as error:
            report[route] = [f"{type(error).__name__}: {error}", time.monotonic() - start]
    print("REPORT" + json.dumps(report))
''')


@pytest.mark.parametrize("endpoint", ["closed port", "http://127.0.0.1:9"])
def test_unreachable_hub_fails_fast_in_one_line_without_retries(tmp_path, endpoint):
    """Issue 21: with HF_HUB_OFFLINE unset and the Hub unreachable, each route fails in < 3 s (it took 23-38 s and
    five retry warnings), with one line naming the cause and the fix."""
    endpoint = closed_port_endpoint() if endpoint == "closed port" else endpoint
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", hub_names.NAMESPACE_ENV)
           and not k.lower().endswith("_proxy")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", UNREACHABLE_CLIENT], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT", 1)[1])
    cause = f"the Hub at {endpoint} cannot be reached (connection refused)"
    assert report.pop("shipped") == ["loaded", 0.0]  # the shipped checkpoints need no Hub
    for route, (message, seconds) in report.items():
        assert seconds < 3.0, (route, seconds)
        assert "\n" not in message and cause in message, (route, message)
    assert report["short name"][0].startswith("ShortNameUnavailableError: Cannot load DMAE short name "
                                              "'dmae-vit-large': it resolves to the Hub repository "
                                              "'dmae-hf/dmae-vit-large'")
    assert "check the connection or HF_ENDPOINT" in report["short name"][0]
    assert "`dmae convert <DMAE-Large .pth> dmae-vit-large`" in report["short name"][0]
    assert report["Hub id"][0] == report["processor"][0] == (
        f"HubUnreachableError: Model 'someone/some-vit' is not in the local cache and needs the Hugging Face Hub, "
        f"and {cause}. Check the connection or HF_ENDPOINT, or pass a local directory, or one of the shipped models "
        "(dmae-tiny-cifar10, dmae-tiny-cifar10-denoiser, vit-tiny-cifar10-clean).")
    assert "dmae-vit-base-sigma0.25" in report["pipeline"][0]
    assert report["dataset"][0].startswith("HubUnreachableError: Dataset 'uoft-cs/cifar10' needs the Hugging Face Hub")
    for chatter in ("Retry", "retry", "thrown while requesting", "couldn't connect"):
        assert chatter not in result.stderr, result.stderr[-3000:]


def test_cached_repositories_still_load_with_the_hub_unreachable(hub_at, tmp_path):
    """A repository fetched once loads from the cache when the Hub goes away, by short name and by Hub id, with its
    optional files (a missing processor config) still answered from the cache."""
    config = DMAEConfig.from_preset("tiny", num_labels=10, smoothing_sigma=0.25)
    config.save_pretrained(tmp_path / "ckpt")
    DMAEImageProcessor.for_cifar10().save_pretrained(tmp_path / "ckpt")
    files = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    name = "dmae-vit-base-sigma0.25"
    with FakeHub() as hub:
        hub_at(hub.endpoint)
        for repo in (f"dmae-hf/{name}", "someone/config-only"):
            hub.repos[repo] = hub_server.Repo()
            hub.commit(repo, files if repo != "someone/config-only" else {"config.json": files["config.json"]})
        assert AutoImageProcessor.from_pretrained(name).do_resize is False
        assert AutoConfig.from_pretrained(name).smoothing_sigma == 0.25
        assert AutoConfig.from_pretrained("someone/config-only").smoothing_sigma == 0.25
        with pytest.raises(OSError):
            AutoImageProcessor.from_pretrained("someone/config-only")  # reachable: transformers' own answer
    hub_at(closed_port_endpoint())  # same cache, the Hub gone
    assert reach.hub_unreachable_reason() is not None
    assert AutoConfig.from_pretrained(name).smoothing_sigma == 0.25
    assert AutoImageProcessor.from_pretrained(name).do_resize is False
    assert AutoConfig.from_pretrained("someone/config-only").num_labels == 10
    with pytest.raises(hub_names.ShortNameUnavailableError, match="not in the local cache, and the Hub at .* cannot"):
        AutoConfig.from_pretrained("dmae-vit-large")  # never fetched
    with pytest.raises(reach.HubUnreachableError, match=r"^Model 'someone/config-only' is in the local cache without "
                       r"model\.safetensors and needs the Hugging Face Hub, and the Hub at .* cannot be reached"):
        DMAEForSmoothedClassification.from_pretrained("someone/config-only")  # weights never fetched


def test_push_to_hub_fails_before_any_work_when_the_hub_cannot_be_reached(hub_at, tmp_path):
    """(`dmae publish` is refused the same way: tests/test_publish.py.)"""
    import torch
    from test_convert import tiny_sd

    from dmae_hf.hub.convert import convert

    torch.save({"model": tiny_sd()}, tmp_path / "pre.pth")
    endpoint = closed_port_endpoint()
    hub_at(endpoint)
    with pytest.raises(reach.HubUnreachableError, match=rf"^--push-to-hub org/x needs the Hugging Face Hub, and the "
                       rf"Hub at {endpoint} cannot be reached \(connection refused\)\. Convert without"):
        convert(tmp_path / "pre.pth", tmp_path / "out", preset="tiny", push_to_hub="org/x")
    assert not (tmp_path / "out").exists()
