"""One certifier: every route (g itself, `model.certify`, the pipeline, ...) builds the smoothed classifier g and
calls it, so the same image with the same seed and options gets the same certificate on each (`dmae certify` at
the seed it gives the image, `image_seed(seed, idx)`), and a bad sigma gets
the same error text on each.

A route is one entry of `ROUTES`: a function `(setup, image path, options) -> certificate fields` for a `Setup` (the
classifier, its denoiser, sigma, override_sigma); it raises what the route raises. A route that serves DMAE
classifiers only says so (`dmae_only`)."""

import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from PIL import Image
from transformers import AutoImageProcessor, pipeline

import dmae_hf
from dmae_hf import DMAEForSmoothedClassification, SmoothedClassifier
from dmae_hf.certification.dataset import image_seed
from dmae_hf.defaults import EMBEDDED_MODEL

IMAGE = Path(dmae_hf.__file__).parent / "assets" / "cifar10" / "test_00003_cat.png"
FIELDS = ("prediction", "radius", "pA_lower", "sigma", "sigma_override", "n0", "n", "alpha")
OPTIONS = {  # certify options every route takes (the noise batch size included: it must not change the result)
    "cohen": dict(n0=20, n=300, alpha=0.01, seed=7, batch_size=128),
    "adaptive": dict(n0=20, n=400, alpha=0.01, seed=7, batch_size=128, method="adaptive", first_look=50),
}


class Setup(NamedTuple):
    model: str = EMBEDDED_MODEL
    denoiser: str | None = None
    sigma: float | None = None
    override_sigma: bool = False


def fields(certificate) -> dict:
    return {name: getattr(certificate, name) for name in FIELDS}


def through_g(setup, image, options):
    g = SmoothedClassifier.from_pretrained(setup.model, sigma=setup.sigma, denoiser=setup.denoiser,
                                           override_sigma=setup.override_sigma)
    return fields(g.certify(g.preprocess(str(image)).pixel_values, **options))


def through_model_certify(setup, image, options):
    """The model's own method on its own processor's pixel values."""
    model = DMAEForSmoothedClassification.from_pretrained(setup.model).eval()
    pixel_values = AutoImageProcessor.from_pretrained(setup.model)(Image.open(image), return_tensors="pt").pixel_values
    return fields(model.certify(pixel_values[0], sigma=setup.sigma, override_sigma=setup.override_sigma, **options))


def through_the_pipeline(setup, image, options):
    certifier = pipeline("certified-image-classification", model=setup.model, sigma=setup.sigma,
                         denoiser=setup.denoiser, override_sigma=setup.override_sigma, device="cpu")
    result = certifier(str(image), **options)
    return {"prediction": result["class_id"], **{name: result[name] for name in FIELDS[1:]}}


def through_the_web_page(setup, image, options):
    """The page's function (`dmae serve`): it picks its own noise batch size, and passes only the options given."""
    from dmae_hf.web.certifier import certify_image

    method = options.get("method", "cohen")
    given = {name: options.get(name) for name in ("first_look", "target_radius", "radius_tolerance")}
    result = certify_image(str(image), model=setup.model, denoiser=setup.denoiser, sigma=setup.sigma,
                           override_sigma=setup.override_sigma, n0=options["n0"], n=options["n"],
                           alpha=options["alpha"], seed=options["seed"], method=method, **given)
    return {"prediction": result.class_id, **{name: getattr(result, name) for name in FIELDS[1:]}}


def through_the_cli(setup, image, options):
    """`dmae certify IMAGE ... --out LOG`, read back from its log (6 decimals, rounded down) and LOG.json; a refused
    run gives ("error", "ValueError", its one line), which is the library's ValueError text. The CLI certifies image
    idx of its inputs with the seed `image_seed(seed, idx)`, so that a dataset's images get independent noise."""
    import json
    import tempfile

    out = Path(tempfile.mkdtemp()) / "log.tsv"
    flags = {"--n0": options["n0"], "--n": options["n"], "--alpha": options["alpha"], "--seed": options["seed"],
             "--batch": options["batch_size"], "--method": options.get("method", "cohen"),
             "--first-look": options.get("first_look"), "--sigma": setup.sigma, "--denoiser": setup.denoiser}
    command = [sys.executable, "-m", "dmae_hf", "certify", str(image), "--model", setup.model, "--out", str(out),
               "--no-progress", *(["--override-sigma"] if setup.override_sigma else [])]
    command += [str(v) for flag, value in flags.items() if value is not None for v in (flag, value)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=240)
    if run.returncode:
        line = run.stderr.strip().splitlines()[-1]
        match = re.fullmatch(r"dmae certify: error: (.*?)( \(--debug shows the traceback\))?", line)
        assert match, run.stderr
        assert not out.parent.joinpath("log.tsv").exists()  # a refused run writes nothing
        return ("error", "ValueError", match.group(1))
    row = out.read_text().splitlines()[1].split("\t")
    settings = json.loads(Path(f"{out}.json").read_text())
    return {"prediction": None if row[2] == "-1" else int(row[2]), "radius": float(row[3]),
            "pA_lower": float(row[6]), **{name: settings[name] for name in ("sigma", "n0", "n", "alpha")}}


class Route(NamedTuple):
    name: str
    certify: object
    dmae_only: bool = False


ROUTES = [
    Route("g", through_g),
    Route("model.certify", through_model_certify, dmae_only=True),
    Route("pipeline", through_the_pipeline),
    Route("web page", through_the_web_page),
]


def outcomes(setup, options=OPTIONS["cohen"], routes=ROUTES):
    """{route name: certificate fields, or ("error", its type, its text)}."""
    results = {}
    for route in routes:
        if route.dmae_only and setup.model != EMBEDDED_MODEL:
            continue
        try:
            results[route.name] = route.certify(setup, IMAGE, options)
        except Exception as error:  # noqa: BLE001  (compared across routes, below)
            results[route.name] = ("error", type(error).__name__, str(error))
    return results


def the_same(results: dict):
    """The one outcome every route gave (so the check fails with the disagreeing routes named)."""
    assert len(results) >= 2
    first = next(iter(results.values()))
    assert all(value == first for value in results.values()), results
    return first


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", list(OPTIONS))
def test_every_route_gives_the_same_certificate(method):
    certificate = the_same(outcomes(Setup(), OPTIONS[method]))
    assert not isinstance(certificate, tuple), certificate  # (an error tuple)
    assert certificate["prediction"] == 3 and certificate["radius"] > 0  # a real certificate (the cat), compared
    assert certificate["sigma"] == 0.25 and certificate["sigma_override"] is False


@pytest.mark.timeout(300)
def test_any_classifier_behind_the_denoiser_gets_the_same_certificate_on_every_route():
    certificate = the_same(outcomes(Setup(model="vit-tiny-cifar10-clean", denoiser="dmae-tiny-cifar10-denoiser")))
    assert not isinstance(certificate, tuple), certificate
    assert certificate["sigma"] == 0.25 and certificate["sigma_override"] is False  # the denoiser's sigma


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sigma, message", [
    (25, r"sigma = 25 is larger than 1: it is in \[0, 1\] pixel units .* divide by 255 \(25 / 255 = 0.09804\)"),
    (0.5, r"This model was trained for sigma = 0.25, not 0.5: .* pass override_sigma=True \(CLI: --override-sigma\)"),
    (0.0, r"sigma must be a number in \(0, 1\]"),
])
def test_a_bad_sigma_gets_the_same_error_on_every_route(sigma, message):
    kind, error_type, text = the_same(outcomes(Setup(sigma=sigma), routes=[*ROUTES, CLI]))
    assert (kind, error_type) == ("error", "ValueError")
    assert re.search(message, text), text


@pytest.mark.timeout(300)
def test_override_sigma_certifies_at_another_sigma_and_records_it():
    certificate = the_same(outcomes(Setup(sigma=0.5, override_sigma=True)))
    assert not isinstance(certificate, tuple), certificate
    assert certificate["sigma"] == 0.5 and certificate["sigma_override"] is True
    own = the_same(outcomes(Setup(sigma=0.25, override_sigma=True)))  # the trained sigma: nothing overridden
    assert own["sigma_override"] is False


CLI = Route("dmae certify", through_the_cli)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", list(OPTIONS))
@pytest.mark.parametrize("setup", [Setup(), Setup("vit-tiny-cifar10-clean", "dmae-tiny-cifar10-denoiser")])
def test_the_cli_gives_gs_certificate_at_its_image_seed(method, setup):
    """`dmae certify` on one image: g's certificate at the seed the CLI gives image 0, as its log writes it."""
    options = OPTIONS[method]
    logged = through_the_cli(setup, IMAGE, options)
    assert not isinstance(logged, tuple), logged
    direct = through_g(setup, IMAGE, {**options, "seed": image_seed(options["seed"], 0)})
    assert logged["prediction"] == direct["prediction"] and direct["prediction"] is not None
    for name in ("radius", "pA_lower"):  # the log writes 6 decimals, rounded down
        assert logged[name] == pytest.approx(direct[name], abs=1e-6) and logged[name] <= direct[name], name
    assert {name: logged[name] for name in ("sigma", "n0", "n", "alpha")} == {
        name: direct[name] for name in ("sigma", "n0", "n", "alpha")}


def test_a_route_fails_the_comparison_when_it_differs():
    """The comparison has teeth: a route that certifies with another seed is caught."""
    def other_seed(setup, image, options):
        return through_g(setup, image, {**options, "seed": options["seed"] + 1})

    with pytest.raises(AssertionError):
        the_same(outcomes(Setup(), routes=[*ROUTES[:1], Route("other seed", other_seed)]))
