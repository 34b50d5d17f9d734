"""Short names, model cards and Hub round trips (over a loopback fake Hub, `tests/hub_server.py`)."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import hub_server
import pytest
import torch
import transformers
import yaml
from conftest import REPO_ROOT
from hub_server import FakeHub
from huggingface_hub import ModelCard
from test_convert import official_checkpoint
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

import dmae_hf
from dmae_hf import DMAEConfig, DMAEForSmoothedClassification, DMAEImageProcessor
from dmae_hf.hub import names as hub_names
from dmae_hf.hub.model_card import default_config, render_model_card, write_all_cards
from dmae_hf.smoothed_classifier import SmoothedClassifier

CLASSIFIER = "dmae-vit-base-sigma0.25"


# ------------------------------------------------------------------------------------------------------ short names
def test_table_covers_the_released_models():
    names = set(hub_names.SHORT_NAMES)
    expected = {"dmae-vit-base", "dmae-vit-large", "dmae-tiny-cifar10", "dmae-tiny-cifar10-denoiser"}
    expected |= {f"dmae-vit-{a}-sigma{s}" for a in ("base", "large") for s in (0.25, 0.5, 1.0)}
    expected |= {f"dmae-vit-base-cifar10-sigma{s}" for s in (0.25, 0.5, 1.0)}
    assert names == expected
    assert hub_names.SHORT_NAMES["dmae-vit-large-sigma0.5"].sigma == 0.5
    assert hub_names.SHORT_NAMES["dmae-vit-large"].kind == "pretraining"


def test_resolution_uses_the_namespace_and_passes_other_names_through(monkeypatch, tmp_path):
    monkeypatch.delenv(hub_names.NAMESPACE_ENV, raising=False)
    assert hub_names.resolve("dmae-vit-base") == "dmae-hf/dmae-vit-base"
    monkeypatch.setenv(hub_names.NAMESPACE_ENV, "my-org")
    assert hub_names.resolve(CLASSIFIER) == f"my-org/{CLASSIFIER}"
    for untouched in ("facebook/vit-mae-base", "someone/dmae-vit-base", "google-bert/bert-base-uncased", "gpt2",
                      str(tmp_path)):
        assert hub_names.resolve(untouched) == untouched
    local = tmp_path / "dmae-vit-base"  # an existing local directory wins over the short name
    local.mkdir()
    monkeypatch.chdir(tmp_path)
    assert hub_names.resolve("dmae-vit-base") == "dmae-vit-base"
    with pytest.raises(ValueError, match=r"Unknown DMAE short name 'dmae-vit-bsae'.*dmae-vit-base, dmae-vit-large"):
        hub_names.resolve("dmae-vit-bsae")


@pytest.mark.parametrize("loader", [
    lambda n: dmae_hf.DMAEForPreTraining.from_pretrained(n), lambda n: AutoConfig.from_pretrained(n),
    lambda n: AutoModel.from_pretrained(n), lambda n: AutoModelForImageClassification.from_pretrained(n),
    lambda n: AutoImageProcessor.from_pretrained(n),
    lambda n: pipeline("certified-image-classification", model=n),
], ids=["DMAEForPreTraining", "AutoConfig", "AutoModel", "AutoModelForImageClassification", "AutoImageProcessor",
        "pipeline"])
def test_unknown_short_names_list_the_known_ones(loader):
    with pytest.raises(ValueError, match=r"Unknown DMAE short name 'dmae-vit-huge'.*Known short names: dmae-vit-base"):
        loader("dmae-vit-huge")


@pytest.fixture
def hub_at(monkeypatch, tmp_path):
    """`hub_at(endpoint, offline)`: this process's Hub client at `endpoint`, an empty cache, the default namespace."""

    def configure(endpoint="https://huggingface.co", offline=False):
        hub_server.point_client_at(monkeypatch, endpoint, tmp_path / "cache", offline=offline)
        monkeypatch.delenv(hub_names.NAMESPACE_ENV, raising=False)

    return configure


LOADERS = [lambda n: dmae_hf.DMAEForPreTraining.from_pretrained(n), lambda n: AutoConfig.from_pretrained(n),
           lambda n: AutoModel.from_pretrained(n), lambda n: AutoModelForImageClassification.from_pretrained(n),
           lambda n: AutoImageProcessor.from_pretrained(n),
           lambda n: pipeline("certified-image-classification", model=n)]
LOADER_IDS = ["DMAEForPreTraining", "AutoConfig", "AutoModel", "AutoModelForImageClassification",
              "AutoImageProcessor", "pipeline"]


@pytest.mark.parametrize("name, message", [
    ("DMAE-TINY-CIFAR10", r"^'DMAE-TINY-CIFAR10' is a wrongly cased short name: did you mean 'dmae-tiny-cifar10'\? "
                          r"Short names are lower case"),
    ("Dmae-Vit-Base", r"'Dmae-Vit-Base' is a wrongly cased short name: did you mean 'dmae-vit-base'\?"),
    ("VIT-TINY-CIFAR10-CLEAN", r"did you mean 'vit-tiny-cifar10-clean'\?"),
    ("dmae-tiny-cifar", r"^Unknown DMAE short name 'dmae-tiny-cifar'\. Did you mean 'dmae-tiny-cifar10'\? Known"),
    ("DMAE-VIT-HUGE", r"^Unknown DMAE short name 'DMAE-VIT-HUGE'\."),
], ids=["upper case", "title case", "shipped ViT", "near miss", "unknown, upper case"])
@pytest.mark.parametrize("loader", LOADERS[:5], ids=LOADER_IDS[:5])
def test_wrongly_cased_or_near_miss_names_are_told_offline(name, message, loader):
    """Issue 23: offline, "DMAE-TINY-CIFAR10" blamed the network; it is a wrongly cased short name."""
    with pytest.raises(hub_names.UnknownShortNameError, match=message) as info:
        loader(name)
    assert "\n" not in str(info.value) and "connect" not in str(info.value)


@pytest.mark.parametrize("value", ["a/b", "org name", "-org", "a..b", "x" * 97, "org/"])
def test_a_bad_namespace_variable_is_named(monkeypatch, value):
    """Issue 23: DMAE_HF_NAMESPACE=a/b gave a plain OSError; it is a ValueError naming the variable."""
    from dmae_hf.hub.available import available_models

    monkeypatch.setenv(hub_names.NAMESPACE_ENV, value)
    message = rf"^DMAE_HF_NAMESPACE='{re.escape(value)}' is not a Hub user or organisation name"
    for call in (lambda: hub_names.resolve("dmae-vit-base"), lambda: AutoConfig.from_pretrained("dmae-vit-base"),
                 lambda: dmae_hf.DMAEForPreTraining.from_pretrained("dmae-vit-large"), available_models):
        with pytest.raises(ValueError, match=message):
            call()
    assert hub_names.resolve("dmae-tiny-cifar10").endswith("dmae-tiny-cifar10")  # shipped: no namespace needed
    monkeypatch.setenv(hub_names.NAMESPACE_ENV, "my-org.v2")
    assert hub_names.resolve("dmae-vit-base") == "my-org.v2/dmae-vit-base"


def _unavailable(loader, name) -> str:
    with pytest.raises(hub_names.ShortNameUnavailableError) as info:
        loader(name)
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)
    message = str(info.value)
    assert f"Cannot load DMAE short name {name!r}: it resolves to the Hub repository 'dmae-hf/{name}'" in message
    return message


@pytest.mark.parametrize("loader", LOADERS, ids=LOADER_IDS)
def test_offline_short_name_names_repo_cause_and_fix(hub_at, loader):
    hub_at(offline=True)
    message = _unavailable(loader, "dmae-vit-large")
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in message
    assert "download DMAE-Large (1.23GB, https://1drv.ms/" in message
    assert "`dmae convert <DMAE-Large .pth> dmae-vit-large`" in message
    assert "`dmae publish <DMAE-Large .pth>`" in message
    assert "couldn't connect" not in message


@pytest.mark.parametrize("loader", LOADERS, ids=LOADER_IDS)
def test_missing_repository_on_the_hub(hub_at, loader):
    with FakeHub() as hub:
        hub_at(hub.endpoint)
        message = _unavailable(loader, CLASSIFIER)
    assert f"the Hub at {hub.endpoint} has no such repository (404, RepositoryNotFound)" in message
    assert "not published there yet" in message
    assert f"`dmae convert <classifier .pth> {CLASSIFIER} --sigma 0.25`" in message  # classifiers: not released
    assert any(path.startswith(f"/api/models/dmae-hf/{CLASSIFIER}") or f"/dmae-hf/{CLASSIFIER}/" in path
               for _, path in hub.requests)


def test_unreachable_endpoint(hub_at):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    hub_at(endpoint)
    for loader in (LOADERS[0], LOADERS[4]):  # a required file, and the optional files an image processor probes
        message = _unavailable(loader, "dmae-vit-base")
        assert f"which is not in the local cache, and the Hub at {endpoint} cannot be reached (connection refused); " \
               "check the connection or HF_ENDPOINT" in message
        assert "download DMAE-Base (427MB" in message


def test_a_missing_optional_file_is_not_an_unreachable_repository(hub_at, tmp_path):
    """A published repository without processor_config.json: the probe still returns None and the load works."""
    config = DMAEConfig.from_preset("tiny", num_labels=10, smoothing_sigma=0.25)
    DMAEImageProcessor.for_cifar10().save_pretrained(tmp_path / "ckpt")
    config.save_pretrained(tmp_path / "ckpt")
    with FakeHub() as hub:
        hub_at(hub.endpoint)
        hub.repos[f"dmae-hf/{CLASSIFIER}"] = hub_server.Repo()
        hub.commit(f"dmae-hf/{CLASSIFIER}", {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()})
        assert AutoImageProcessor.from_pretrained(CLASSIFIER).do_resize is False
        assert AutoConfig.from_pretrained(CLASSIFIER).smoothing_sigma == 0.25


def test_wrapped_transformers_function_is_still_what_the_hook_expects(tmp_path):
    """Issue 14: the short-name hook wraps `transformers.utils.hub.cached_files` and relies on its signature and on
    the exceptions it chains. If this fails, transformers changed that function: update `dmae_hf/hub/names.py`."""
    import inspect

    from huggingface_hub.errors import LocalEntryNotFoundError
    from transformers.utils import hub

    hint = f"transformers {transformers.__version__} changed utils.hub.cached_files; update dmae_hf/hub/names.py"
    assert getattr(hub.cached_files, "_dmae_short_names", False), "the hook is not installed: " + hint
    original = hub.cached_files.__wrapped__
    params = inspect.signature(original).parameters
    assert list(params)[:2] == ["path_or_repo_id", "filenames"], hint
    for name in (*hub_names._RAISE_FLAGS, "local_files_only", "cache_dir"):
        assert name in params and params[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, f"{name}: {hint}"
    # every file fetch goes through the module attribute (cached_file looks it up at call time)
    assert "cached_files(" in inspect.getsource(hub.cached_file), hint
    # offline, an uncached repository raises an OSError chained to LocalEntryNotFoundError (the "offline" cause)
    with pytest.raises(OSError) as info:
        original("dmae-hf/never-published", ["config.json"], local_files_only=True, cache_dir=str(tmp_path),
                 _raise_exceptions_for_missing_entries=True, _raise_exceptions_for_connection_errors=True)
    assert isinstance(info.value.__cause__, LocalEntryNotFoundError), hint
    assert hub_names.unavailable_cause(info.value, local_files_only=True) == "offline"


def test_packaged_checkpoint_is_used_when_present(monkeypatch, tmp_path):
    """`dmae-tiny-cifar10` loads from dmae_hf/checkpoints/ (here redirected to a temporary copy) with no Hub."""
    config = DMAEConfig.from_preset("tiny", num_labels=10, smoothing_sigma=0.25)
    torch.manual_seed(0)
    model = DMAEForSmoothedClassification(config).eval()
    monkeypatch.setattr(hub_names, "PACKAGED_CHECKPOINTS", tmp_path)
    assert hub_names.resolve("dmae-tiny-cifar10") == f"{hub_names.namespace()}/dmae-tiny-cifar10"  # not there yet
    model.save_pretrained(tmp_path / "dmae-tiny-cifar10")
    DMAEImageProcessor.for_cifar10().save_pretrained(tmp_path / "dmae-tiny-cifar10")
    assert hub_names.resolve("dmae-tiny-cifar10") == str(tmp_path / "dmae-tiny-cifar10")
    loaded = AutoModelForImageClassification.from_pretrained("dmae-tiny-cifar10").eval()
    assert isinstance(loaded, DMAEForSmoothedClassification)
    assert all(torch.equal(a, b)
               for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True))
    assert AutoImageProcessor.from_pretrained("dmae-tiny-cifar10").do_resize is False


# ------------------------------------------------------------------------------------- shipped checkpoints by name
SHIPPED_ROUTES = {
    "dmae-tiny-cifar10": {
        "AutoConfig": (AutoConfig, "DMAEConfig"), "AutoModel": (AutoModel, "DMAEModel"),
        "AutoModelForImageClassification": (AutoModelForImageClassification, "DMAEForSmoothedClassification"),
        "DMAEForSmoothedClassification": (DMAEForSmoothedClassification, "DMAEForSmoothedClassification"),
        "AutoImageProcessor": (AutoImageProcessor, "DMAEImageProcessor")},
    "dmae-tiny-cifar10-denoiser": {
        "AutoConfig": (AutoConfig, "DMAEConfig"), "AutoModel": (AutoModel, "DMAEModel"),
        "AutoModelForPreTraining": (transformers.AutoModelForPreTraining, "DMAEForPreTraining"),
        "DMAEForPreTraining": (dmae_hf.DMAEForPreTraining, "DMAEForPreTraining"),
        "AutoImageProcessor": (AutoImageProcessor, "DMAEImageProcessor")},
    "vit-tiny-cifar10-clean": {
        "AutoConfig": (AutoConfig, "ViTConfig"), "AutoModel": (AutoModel, "ViTModel"),
        "AutoModelForImageClassification": (AutoModelForImageClassification, "ViTForImageClassification"),
        "ViTForImageClassification": (transformers.ViTForImageClassification, "ViTForImageClassification"),
        "AutoImageProcessor": (AutoImageProcessor, "ViTImageProcessor")},
}


@pytest.mark.parametrize("name, route", [(n, r) for n, routes in SHIPPED_ROUTES.items() for r in routes],
                         ids=lambda v: v)
def test_every_shipped_checkpoint_loads_by_its_short_name_offline(name, route, tmp_path, monkeypatch):
    """Issue 21: the classifier, the denoiser and the clean ViT load by name in every route, offline, from any
    directory (before, `vit-tiny-cifar10-clean` failed with transformers' generic network message)."""
    assert hub_names.resolve(name) == str(hub_names.packaged_path(name))
    monkeypatch.chdir(tmp_path)  # nothing of that name here: the packaged copy is what loads
    loader, expected = SHIPPED_ROUTES[name][route]
    assert type(loader.from_pretrained(name)).__name__.startswith(expected)  # ViTImageProcessor(Pil)


def test_shipped_checkpoints_in_pipelines_by_short_name():
    from PIL import Image

    image = Image.new("RGB", (32, 32), (120, 60, 30))
    plain = pipeline("image-classification", model="vit-tiny-cifar10-clean")
    assert plain(image)[0]["label"] in plain.model.config.id2label.values()
    for model, denoiser in (("dmae-tiny-cifar10", None), ("vit-tiny-cifar10-clean", "dmae-tiny-cifar10-denoiser")):
        certifier = pipeline("certified-image-classification", model=model, denoiser=denoiser)
        out = certifier(image, n0=10, n=50, alpha=0.01, seed=0)
        assert out["sigma"] == 0.25 and out["denoiser"] == denoiser, out
        g = SmoothedClassifier.from_pretrained(model, denoiser=denoiser)  # the one certifier, by name too
        assert g.sigma == 0.25 and g.denoiser_name == denoiser and g.id2label[3] == "cat"


def test_available_models_offers_what_loads_now_and_routes_for_the_rest(hub_at, tmp_path):
    """Issue 21: the picker's list. Offline with an empty cache only the shipped checkpoints are loadable; a released
    name fetched once joins them ("cached"); the others come apart, each with its `dmae publish` route."""
    from dmae_hf.hub.available import available_models

    hub_at(offline=True)
    models = available_models()
    shipped = ["dmae-tiny-cifar10", "dmae-tiny-cifar10-denoiser", "vit-tiny-cifar10-clean"]
    assert [(m.name, m.kind, m.status, m.sigma) for m in models.loadable] == [
        ("dmae-tiny-cifar10", "classifier", "shipped", 0.25),
        ("dmae-tiny-cifar10-denoiser", "denoiser", "shipped", None),
        ("vit-tiny-cifar10-clean", "classifier", "shipped", None)]
    assert [m.name for m in models.elsewhere] == [n for n in hub_names.SHORT_NAMES if n not in shipped]
    assert all(m.status == "not cached" and not m.loadable and "`dmae publish <" in m.hint for m in models.elsewhere)
    for m in models.loadable:  # every loadable name really loads offline
        AutoConfig.from_pretrained(m.name)

    with FakeHub() as hub:  # publish one classifier, fetch it once: it is then cached
        hub_at(hub.endpoint)
        model = DMAEForSmoothedClassification(DMAEConfig.from_preset("tiny", num_labels=10, smoothing_sigma=0.25))
        model.save_pretrained(tmp_path / "ckpt")
        hub.repos[f"dmae-hf/{CLASSIFIER}"] = hub_server.Repo()
        hub.repos["dmae-hf/dmae-vit-large"] = hub_server.Repo()  # published, never fetched
        hub.commit(f"dmae-hf/{CLASSIFIER}", {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()})
        hub.commit("dmae-hf/dmae-vit-large", {"config.json": b"{}"})
        DMAEForSmoothedClassification.from_pretrained(CLASSIFIER)
        asked = {m.name: m for m in available_models(ask_hub=True).elsewhere}
        assert ("GET", "/api/models") in hub.requests
        large = asked["dmae-vit-large"]
        assert large.status == "download" and "loading it downloads it" in large.hint
        assert asked["dmae-vit-base"].status == "unpublished"
        assert "download DMAE-Base (427MB" in asked["dmae-vit-base"].hint
        assert asked["dmae-vit-base-sigma0.5"].hint.endswith("`dmae publish <classifier .pth>=dmae-vit-base-sigma0.5`")
    hub_at(offline=True)  # the same cache, offline
    models = available_models(ask_hub=True)  # offline: the Hub is not asked
    assert [m.name for m in models.loadable] == shipped + [CLASSIFIER]
    assert models.loadable[-1].status == "cached" and models.loadable[-1].sigma == 0.25
    assert {m.status for m in models.elsewhere} == {"not cached"}
    AutoConfig.from_pretrained(CLASSIFIER)  # offline, from the cache


# ------------------------------------------------------------------------------------------------------ load report
@pytest.fixture
def transformers_log():
    """What transformers logs (its loggers and the children, as DMAE's), captured into a non-TTY stream."""
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def test_pretraining_checkpoint_into_classifier_logs_one_line(tmp_path, transformers_log):
    from safetensors.torch import load_file, save_file

    config = DMAEConfig.from_preset("tiny")
    dmae_hf.DMAEForPreTraining(config).save_pretrained(tmp_path / "pre")
    decoder = [k for k in load_file(tmp_path / "pre" / "model.safetensors") if k.startswith("decoder.")]
    model = DMAEForSmoothedClassification.from_pretrained(tmp_path / "pre", num_labels=10)
    lines = transformers_log.getvalue().splitlines()
    assert lines == [f"DMAEForSmoothedClassification from {tmp_path / 'pre'}: dropped decoder + dmae.layernorm "
                     f"({len(decoder) + 2} tensors), initialised classifier + fc_norm (4 tensors)"], lines
    assert len(decoder) == 8 + 12 * config.decoder_num_hidden_layers  # embed, mask, pos, norm, pred + blocks
    assert "\x1b[" not in transformers_log.getvalue()
    assert model.classifier.weight.shape == (10, config.hidden_size)

    # a fine-tuned classifier reloads silently; a key outside the expected sets still gets transformers' full report
    model.save_pretrained(tmp_path / "cls")
    transformers_log.truncate(0)
    transformers_log.seek(0)
    DMAEForSmoothedClassification.from_pretrained(tmp_path / "cls")
    assert transformers_log.getvalue() == ""
    weights = load_file(tmp_path / "cls" / "model.safetensors")
    weights["dmae.stray.weight"] = torch.zeros(3)
    save_file(weights, tmp_path / "cls" / "model.safetensors", metadata={"format": "pt"})
    DMAEForSmoothedClassification.from_pretrained(tmp_path / "cls")
    report = transformers_log.getvalue()
    assert "LOAD REPORT" in report and re.search(r"dmae\.stray\.weight\s+\| UNEXPECTED", report), report


# ------------------------------------------------------------------------------------------------------ model cards
def test_committed_cards_are_the_generated_ones(tmp_path):
    generated = {p.name: p.read_text() for p in write_all_cards(tmp_path)}
    committed = {p.name: p.read_text() for p in (REPO_ROOT / "model_cards").glob("*.md")}
    assert set(committed) == set(generated), "run: python -m dmae_hf.hub.model_card --all --out model_cards/"
    for name, text in generated.items():
        assert committed[name] == text, f"model_cards/{name} is stale; regenerate it"


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "model_cards").glob("*.md")), ids=lambda p: p.stem)
def test_card_metadata_parses(path):
    text = path.read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    card = ModelCard(text)
    assert card.data.license == meta["license"] == "cc-by-nc-4.0"
    assert {"certified-robustness", "randomized-smoothing"} <= set(meta["tags"])
    assert "ILSVRC/imagenet-1k" in meta["datasets"]
    assert "Wu, Quanlin and Ye, Hang and Gu, Yuntian and Zhang, Huishuai and Wang, Liwei and He, Di" in text
    assert "not yet published" in text
    entry = hub_names.SHORT_NAMES[path.stem]
    if entry.kind == "classifier":
        assert meta["pipeline_tag"] == "image-classification"
        results = card.data.eval_results
        assert results and all(r.metric_type == "certified-accuracy" and not r.verified for r in results)
        assert all("paper, best over sigma" in r.metric_name for r in results)
        if entry.dataset == "imagenet-1k":
            expected = {"vit-base": 69.6, "vit-large": 73.6}[entry.preset]  # Table 1, r = 0.5
        else:
            expected = 79.2  # Table 3, DMAE ViT-B, r = 0.25
        assert results[0].metric_value == expected
    else:
        assert card.data.eval_results is None  # the paper's numbers are for classifiers; shown in the text only
        assert {"vit-base": "| 69.6 |", "vit-large": "| 73.6 |"}[entry.preset] in text


def test_card_with_measured_results():
    results = {"radii": [0.0, 0.25, 0.5], "rows": [
        {"name": "sigma=0.25", "certified_accuracy": [0.6, 0.45, 0.2], "acr": 0.31234, "n_images": 100}],
        "envelope": [0.6, 0.45, 0.2]}
    config = default_config("dmae-tiny-cifar10")
    text = render_model_card("dmae-tiny-cifar10", config, results)
    card = ModelCard(text)
    assert card.data.license == "apache-2.0" and card.data.datasets == ["uoft-cs/cifar10"]
    values = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert values == {"Certified accuracy at r=0.0 (sigma=0.25)": 60.0,
                      "Certified accuracy at r=0.25 (sigma=0.25)": 45.0,
                      "Certified accuracy at r=0.5 (sigma=0.25)": 20.0, "ACR (sigma=0.25)": 0.312}
    assert "| sigma=0.25 | 100 | 60.0 | 45.0 | 20.0 | 0.312 |" in text


# -------------------------------------------------------------------------------------------------- Hub round trip
CLIENT = textwrap.dedent('''
    import json, sys, torch
    from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                              AutoModelForPreTraining)
    import dmae_hf
    from dmae_hf import DMAEForPreTraining, DMAEForSmoothedClassification
    from dmae_hf.cli import main

    work = sys.argv[1]
    # 1. convert official-layout checkpoints and push them: a repo id, and a short name (-> $DMAE_HF_NAMESPACE/...)
    assert main(["convert", f"{work}/pretrain.pth", f"{work}/out-pre", "--preset", "tiny",
                 "--push-to-hub", "tester/dmae-vit-base"]) == 0
    assert main(["convert", f"{work}/classifier.pth", f"{work}/out-cls", "--preset", "tiny", "--sigma", "0.25",
                 "--normalization", "cifar10", "--push-to-hub", "dmae-vit-base-sigma0.25"]) == 0
    report = {}

    # 2. load back through the short names
    local = DMAEForPreTraining.from_pretrained(f"{work}/out-pre")
    remote = DMAEForPreTraining.from_pretrained("dmae-vit-base")
    report["pretraining_equal"] = all(torch.equal(a, b) for a, b in
                                      zip(local.state_dict().values(), remote.state_dict().values()))
    report["auto"] = {
        "AutoConfig": type(AutoConfig.from_pretrained("dmae-vit-base")).__name__,
        "AutoModel": type(AutoModel.from_pretrained("dmae-vit-base")).__name__,
        "AutoModelForPreTraining": type(AutoModelForPreTraining.from_pretrained("dmae-vit-base")).__name__,
        "AutoModelForImageClassification": type(AutoModelForImageClassification.from_pretrained(
            "dmae-vit-base-sigma0.25")).__name__,
        "AutoImageProcessor": type(AutoImageProcessor.from_pretrained("dmae-vit-base-sigma0.25")).__name__,
    }
    classifier = DMAEForSmoothedClassification.from_pretrained("dmae-vit-base-sigma0.25").eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = DMAEForSmoothedClassification.from_pretrained(f"{work}/out-cls").eval()
    with torch.no_grad():
        report["classifier_logits_equal"] = torch.equal(classifier(x).logits, reference(x).logits)
    report["sigma"] = classifier.config.smoothing_sigma
    report["label3"] = classifier.config.id2label[3]
    from transformers import pipeline
    certifier = pipeline("certified-image-classification", model="dmae-vit-base-sigma0.25")
    report["pipeline"] = certifier(f"{work}/image.jpg", n0=10, n=100, alpha=0.01, seed=0)

    # 3. the usage code of the pushed model cards runs as written (on image.jpg, a real ImageNet photo)
    import re
    from huggingface_hub import hf_hub_download
    for repo in sys.argv[2:]:
        card = open(hf_hub_download(repo, "README.md")).read()
        code = re.search(r"```python\\n(.*?)```", card, re.S).group(1)
        code = re.sub(r"\\bn=[0-9_]+", "n=200", code)  # fewer Monte Carlo samples than the paper's, for speed
        exec(compile(code, f"{repo}/README.md", "exec"), {})
    print("REPORT" + json.dumps(report))
''')


def test_convert_push_and_load_by_short_name(tmp_path):
    photo = REPO_ROOT / "dmae_hf" / "assets" / "imagenet" / "val_00000_bull_mastiff.jpg"  # a bundled ImageNet photo
    (tmp_path / "image.jpg").write_bytes(photo.read_bytes())
    torch.save({"model": official_checkpoint("pretraining", dim=32, depth=2, patch=8, image=32, dec_dim=32,
                                             dec_depth=1)}, tmp_path / "pretrain.pth")
    torch.save({"model": official_checkpoint("classifier", dim=32, depth=2, patch=8, image=32)},
               tmp_path / "classifier.pth")
    with FakeHub() as hub:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(HF_ENDPOINT=hub.endpoint, HF_TOKEN="x", HF_HOME=str(tmp_path / "hf_home"),
                   HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", DMAE_HF_NAMESPACE="tester",
                   PYTHONPATH=str(REPO_ROOT))
        cards_to_run = ["tester/dmae-vit-base", "tester/dmae-vit-base-sigma0.25"]
        result = subprocess.run([sys.executable, "-c", CLIENT, str(tmp_path), *cards_to_run], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
        report = json.loads(result.stdout.split("REPORT", 1)[1])
        assert "(1, 16, 192) (1, 17, 32)" in result.stdout  # the pre-training card's example printed its outputs
        assert re.search(r"^(abstain|\w+ certified L2 radius [0-9.]+)$", result.stdout, re.M)  # the classifier's

        assert report["pretraining_equal"] and report["classifier_logits_equal"]
        assert report["auto"] == {"AutoConfig": "DMAEConfig", "AutoModel": "DMAEModel",
                                  "AutoModelForPreTraining": "DMAEForPreTraining",
                                  "AutoModelForImageClassification": "DMAEForSmoothedClassification",
                                  "AutoImageProcessor": "DMAEImageProcessor"}
        assert report["sigma"] == 0.25 and report["label3"] == "cat"
        certificate = report["pipeline"]  # the pipeline certified the photo with the pushed classifier
        assert set(certificate) == {"label", "class_id", "radius", "pA_lower", "abstained", "sigma", "n0", "n",
                                    "alpha", "resolution", "denoiser", "sigma_override", "shrink", "note", "caveat"}
        assert certificate["sigma"] == 0.25 and certificate["n"] == 100 and not certificate["sigma_override"]

        # what the Hub received: safetensors weights (no pickles), configs, processor config and the rendered card
        for repo_id, card_name in (("tester/dmae-vit-base", "dmae-vit-base"),
                                   ("tester/dmae-vit-base-sigma0.25", CLASSIFIER)):
            files = hub.repos[repo_id].files
            assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= set(files)
            assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
            config = DMAEConfig.from_dict(json.loads(files["config.json"]))
            assert files["README.md"].decode() == render_model_card(card_name, config, namespace="tester")
        assert json.loads(hub.repos["tester/dmae-vit-base-sigma0.25"].files["preprocessor_config.json"])[
            "do_resize"] is False
        # every request carried the namespaced repo id: no bare short name ever reached the Hub
        bare = [path for _, path in hub.requests if re.search(r"/(api/models/)?dmae-vit-base(-sigma0\.25)?(/|$)",
                                                                 path) and "/tester/" not in path]
        assert not bare, bare


def test_model_card_cli_renders_a_checkpoint_with_results(tmp_path):
    from dmae_hf.hub.model_card import main

    ckpt = tmp_path / "dmae-tiny-cifar10"
    default_config("dmae-tiny-cifar10").save_pretrained(ckpt)
    results = {"radii": [0.0, 0.5], "rows": [{"name": "sigma=0.25", "certified_accuracy": [0.5, 0.25], "acr": 0.2,
                                              "n_images": 40}], "envelope": None}
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["dmae-tiny-cifar10", "--config-dir", str(ckpt), "--results", str(tmp_path / "results.json"),
                 "--out", str(ckpt)]) == 0
    card = ModelCard.load(ckpt / "README.md")
    assert [r.metric_value for r in card.data.eval_results] == [50.0, 25.0, 0.2]
    assert "Measured results below come from this repository's weights" in card.text
