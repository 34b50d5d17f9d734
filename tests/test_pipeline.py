"""The `certified-image-classification` pipeline on real CIFAR-10 test images with a tiny saved DMAE classifier."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

import dmae_hf
from dmae_hf import DMAEConfig, DMAEForSmoothedClassification, DMAEImageProcessor, RandomizedSmoothingPipeline
from dmae_hf.defaults import CERTIFICATE_CAVEAT, MAX_SHRINK

CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TASK = "certified-image-classification"
SMALL = dict(n0=10, n=100, alpha=0.01, batch_size=64, seed=3)
KEYS = {"label", "class_id", "radius", "pA_lower", "abstained", "sigma", "sigma_override", "n0", "n", "alpha",
        "resolution", "shrink", "note", "denoiser", "caveat"}


def build_classifier(path, smoothing_sigma=0.25, with_processor=True):
    """A tiny CIFAR-10 DMAE classifier with CIFAR-10 label names and a non-trivial head, saved to `path`."""
    torch.manual_seed(0)
    config = DMAEConfig.from_preset("tiny", num_labels=10, smoothing_sigma=smoothing_sigma,
                                    id2label=dict(enumerate(CIFAR10_LABELS)))
    model = DMAEForSmoothedClassification(config).eval()
    model.classifier.weight.data.normal_(0, 0.5)  # spread the votes: some certified, some abstentions
    model.save_pretrained(path)
    if with_processor:
        DMAEImageProcessor.for_cifar10().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return build_classifier(tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="module")
def certifier(classifier_dir):
    return pipeline(TASK, model=str(classifier_dir), device="cpu")


def check_result(result, sigma=0.25, sigma_override=False):
    assert set(result) == KEYS
    assert result["caveat"] == CERTIFICATE_CAVEAT and result["sigma_override"] is sigma_override
    assert result["shrink"] >= 1.0 and (result["note"] is None) == (result["shrink"] <= MAX_SHRINK)
    assert isinstance(result["abstained"], bool) and isinstance(result["radius"], float)
    assert result["sigma"] == sigma and 0.0 <= result["pA_lower"] <= 1.0
    if result["abstained"]:
        assert result["label"] is None and result["class_id"] is None and result["radius"] == 0.0
    else:
        assert isinstance(result["class_id"], int) and 0 <= result["class_id"] < 10  # never -1
        assert result["label"] == CIFAR10_LABELS[result["class_id"]] and result["radius"] > 0


@pytest.mark.timeout(60)
def test_pipeline_is_registered_and_loads_the_saved_processor(certifier):
    assert TASK in dmae_hf.RandomizedSmoothingPipeline._registered_impl
    assert isinstance(certifier, RandomizedSmoothingPipeline)
    assert isinstance(certifier.image_processor, DMAEImageProcessor)
    assert certifier.image_processor.do_resize is False and certifier.image_processor.do_center_crop is False
    assert certifier.device == torch.device("cpu") and not certifier.model.training


@pytest.mark.timeout(60)
def test_inputs_pil_path_numpy_list_agree_and_match_model_certify(certifier, cifar10_test_images, tmp_path):
    images, _ = cifar10_test_images
    image = images[1]
    image.save(tmp_path / "car.png")
    pil = certifier(image, **SMALL)
    check_result(pil)
    assert certifier(str(tmp_path / "car.png"), **SMALL) == pil
    assert certifier(tmp_path / "car.png", **SMALL) == pil
    assert certifier(np.asarray(image), **SMALL) == pil  # HWC uint8
    assert certifier(np.asarray(image, dtype=np.float32) / 255.0, **SMALL) == pil  # HWC float in [0, 1]
    assert certifier(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1), **SMALL) == pil

    pixel_values = DMAEImageProcessor.for_cifar10()(image).pixel_values
    cert = certifier.model.certify(pixel_values[0], n0=10, n=100, alpha=0.01, batch_size=64, seed=3)
    assert (pil["class_id"], pil["radius"], pil["pA_lower"]) == (cert.prediction, cert.radius, cert.pA_lower)

    results = certifier(images[:6], **SMALL)
    assert isinstance(results, list) and len(results) == 6 and results[1] == pil
    for result in results:
        check_result(result)
    assert {r["abstained"] for r in certifier(images[:10], n0=10, n=100, alpha=0.01)} == {True, False}


@pytest.mark.timeout(60)
def test_constructor_defaults_and_call_overrides(classifier_dir, cifar10_test_images):
    images, _ = cifar10_test_images
    certifier = pipeline(TASK, model=str(classifier_dir), device=torch.device("cpu"), n0=10, n=50, alpha=0.05,
                         batch_size=16)
    result = certifier(images[0])
    assert (result["n0"], result["n"], result["alpha"]) == (10, 50, 0.05)
    assert certifier(images[0], n=80)["n"] == 80
    assert certifier(images[0], seed=1, batch_size=7) == certifier(images[0], seed=1, batch_size=50)
    check_result(certifier(images[0], autocast_dtype="bf16"))
    adaptive = certifier(images[0], n=200, method="adaptive", first_look=50)
    check_result(adaptive)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kwargs, message", [
    (dict(n0=200, n=100), "n0"),
    (dict(n=0), "n must be"),
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=1.0), "alpha"),
    (dict(alpha=1.5), "alpha"),
    (dict(batch_size=0), "batch_size"),
    (dict(method="bayes"), "method"),
    (dict(sigma=0.5), "sigma is fixed when the pipeline is created"),
    (dict(override_sigma=True), "sigma is fixed when the pipeline is created"),
    (dict(temperature=2), "Unknown argument"),
    (dict(autocast_dtype="int8"), "autocast_dtype"),
])
def test_bad_arguments_raise_value_error(certifier, cifar10_test_images, kwargs, message):
    images, _ = cifar10_test_images
    with pytest.raises(ValueError, match=message):
        certifier(images[0], **{**SMALL, **kwargs})


@pytest.mark.timeout(60)
def test_sigma_comes_from_the_config(tmp_path, cifar10_test_images):
    images, _ = cifar10_test_images
    result = pipeline(TASK, model=str(build_classifier(tmp_path / "s05", smoothing_sigma=0.5)), device="cpu")(
        images[0], **SMALL)
    assert result["sigma"] == 0.5
    with pytest.raises(ValueError, match="sigma is required"):  # fine-tuned without noise: no sigma to default to
        pipeline(TASK, model=str(build_classifier(tmp_path / "s0", smoothing_sigma=0.0)), device="cpu")
    with pytest.raises(ValueError, match=r"trained for sigma = 0.5, not 0.25: .*override_sigma=True"):
        pipeline(TASK, model=str(tmp_path / "s05"), sigma=0.25, device="cpu")
    overridden = pipeline(TASK, model=str(tmp_path / "s05"), sigma=0.25, override_sigma=True, device="cpu")
    check_result(overridden(images[0], **SMALL), sigma=0.25, sigma_override=True)
    with pytest.raises(ValueError, match="smoothing_sigma"):
        DMAEConfig.from_preset("tiny", smoothing_sigma=-0.25)


@pytest.mark.timeout(60)
def test_image_modes_are_converted_or_rejected(certifier, cifar10_test_images, tmp_path):
    image = cifar10_test_images[0][3]
    gray = image.convert("L")
    rgb_of_gray = certifier(gray.convert("RGB"), **SMALL)
    assert certifier(gray, **SMALL) == rgb_of_gray
    assert certifier(np.asarray(gray), **SMALL) == rgb_of_gray  # 2-D uint8 array
    sixteen = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)  # mode I;16, full 16-bit range
    assert sixteen.mode == "I;16"
    assert certifier(sixteen, **SMALL) == rgb_of_gray
    check_result(certifier(image.convert("CMYK"), **SMALL))
    check_result(certifier(image.convert("RGBA"), **SMALL))
    image.convert("CMYK").save(tmp_path / "cmyk.jpg")
    check_result(certifier(str(tmp_path / "cmyk.jpg"), **SMALL))

    bad = np.asarray(image, dtype=np.float32) / 255.0
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        certifier(bad, **SMALL)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        certifier(np.asarray(image, dtype=np.float32), **SMALL)  # 0-255 floats
    with pytest.raises(ValueError, match="shape"):
        certifier(np.zeros((2, 32, 32, 3), dtype=np.uint8), **SMALL)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="Cannot read the image"):
        certifier(str(tmp_path / "broken.png"), **SMALL)
    with pytest.raises(ValueError, match="No image file"):
        certifier(str(tmp_path / "missing.png"), **SMALL)


@pytest.mark.timeout(60)
def test_without_a_saved_processor_falls_back_to_rescaling(tmp_path, cifar10_test_images, certifier):
    images, _ = cifar10_test_images
    bare = pipeline(TASK, model=str(build_classifier(tmp_path / "bare", with_processor=False)), device="cpu")
    assert isinstance(bare.image_processor, DMAEImageProcessor) and bare.image_processor.do_resize is False
    assert bare(images[0], **SMALL) == certifier(images[0], **SMALL)


@pytest.mark.timeout(60)
def test_short_name_loads_model_and_processor_from_the_hub_cache(tmp_path, cifar10_test_images):
    """A short name resolves to `dmae-hf/<name>`, here served offline from a Hub cache holding a tiny model."""
    images, _ = cifar10_test_images
    repo = tmp_path / "hub" / "models--dmae-hf--dmae-vit-base-sigma0.5"
    snapshot = build_classifier(repo / "snapshots" / ("0" * 40), smoothing_sigma=0.5, with_processor=False)
    DMAEImageProcessor(do_resize=True, resize_shortest_edge=32, do_center_crop=True, crop_size=32).save_pretrained(
        snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    certifier = pipeline(TASK, model="dmae-vit-base-sigma0.5", device="cpu",
                         model_kwargs={"cache_dir": str(tmp_path / "hub")})
    assert certifier.image_processor.do_resize is True  # the saved processor, not the rescale-only fallback
    result = certifier(images[0].resize((40, 48)), **SMALL)  # resized to 32 and cropped by that processor
    check_result(result, sigma=0.5)


@pytest.mark.timeout(60)
def test_unknown_short_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="Known short names"):
        pipeline(TASK, model="dmae-vit-tiny-sigma9")
