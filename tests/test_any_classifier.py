"""Certifying any image classifier (transformers ViT, ConvNeXt, ResNet with their own processors, or a torch module),
optionally behind a DMAE denoiser: `SmoothedClassifier`, the pipeline and the CLI, on real CIFAR-10 test images."""

import json

import datasets
import pytest
import torch
from scipy.stats import binomtest
from test_pipeline import build_classifier
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextImageProcessor,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    pipeline,
)

from dmae_hf import DMAEConfig, DMAEForPreTraining, DMAEImageProcessor, SmoothedClassifier, smoothing
from dmae_hf.certification.dataset import image_seed
from dmae_hf.certification.log import read_rows
from dmae_hf.cli import main

TASK = "certified-image-classification"
SMALL = dict(n0=10, n=100, alpha=0.01, batch_size=64, seed=3)
LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]


def labelled(config):
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {name: i for i, name in enumerate(LABELS)}
    return config


def vit():
    return (ViTForImageClassification(labelled(ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=10))),
        ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD))


def convnext():  # 48 px: the processor resizes the 32 px images up (shortest edge 48 / crop_pct, center crop 48)
    return (ConvNextForImageClassification(labelled(ConvNextConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=10))),
        ConvNextImageProcessor(size={"shortest_edge": 48}, crop_pct=0.875))


def resnet():  # ImageNet mean/std and a 40 px resize: processors and inputs differ from the ViT's
    return (ResNetForImageClassification(labelled(ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10))),
        ConvNextImageProcessor(size={"shortest_edge": 40}, crop_pct=1.0))


BUILDERS = {"vit": vit, "convnext": convnext, "resnet": resnet}


def save(builder, path):
    torch.manual_seed(0)
    model, processor = builder()
    for module in model.modules():  # spread the votes, so that some images certify and some do not
        if isinstance(module, torch.nn.Linear) and module.out_features == 10:
            module.weight.data.normal_(0, 2.0)
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)
    return model, processor


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifiers")
    return {name: (root / name, *save(builder, root / name)) for name, builder in BUILDERS.items()}


def hand_built_f(model, processor):
    """f = the processor's normalisation, then the model: written out, not through dmae_hf."""
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    return lambda z: model(pixel_values=(z - mean) / std).logits


def build_denoiser(path=None, sigma=0.25, norm_pix_loss=True, image_size=32, seed=0):
    torch.manual_seed(seed)
    model = DMAEForPreTraining(DMAEConfig.from_preset("tiny", noise_sigma=sigma, norm_pix_loss=norm_pix_loss,
                                                      image_size=image_size)).eval()
    if path is not None:
        model.save_pretrained(path)
    return model


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_transformers_classifiers_certify_like_a_hand_built_f(name, saved, cifar10_test_images):
    """The pipeline brings the image to the model's input in [0, 1] (the processor's resize, not its normalisation),
    adds the noise there and normalises inside f: its certificates equal `smoothing.certify` of a hand-built f on
    the processor's own [0, 1] output, for the same seed."""
    path, model, processor = saved[name]
    certifier = pipeline(TASK, model=str(path), sigma=0.25, device="cpu")
    images, _ = cifar10_test_images
    size = processor(images[0], return_tensors="pt")["pixel_values"].shape[-1]
    f = hand_built_f(model, processor)
    certified = 0
    for image in images[:4]:
        result = certifier(image, **SMALL)
        x = torch.from_numpy(processor(image, do_normalize=False, return_tensors="np")["pixel_values"][0])
        expected = smoothing.certify(f, x, 0.25, **{k: v for k, v in SMALL.items() if k != "batch_size"},
                                     batch_size=SMALL["batch_size"])
        assert result["class_id"] == expected.prediction and result["radius"] == pytest.approx(expected.radius)
        assert result["pA_lower"] == pytest.approx(expected.pA_lower)
        assert result["resolution"] == [size, size] and result["sigma"] == 0.25 and result["denoiser"] is None
        if expected.prediction is not None:
            assert result["label"] == LABELS[expected.prediction]
            certified += 1
    assert certified > 0  # the comparison covered certificates, not only abstentions


@pytest.mark.timeout(60)
def test_torch_module_route(cifar10_test_images):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    module[1].weight.data.normal_(0, 0.2)
    smoothed = SmoothedClassifier(module, sigma=0.25, image_mean=MEAN, image_std=STD)
    images, _ = cifar10_test_images
    x = DMAEImageProcessor.for_cifar10()(images[1], return_tensors="pt").pixel_values[0]
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = smoothing.certify(lambda z: module((z - mean) / std), x, 0.25, n0=10, n=100, alpha=0.01, seed=1)
    got = smoothed.certify(x, n0=10, n=100, alpha=0.01, seed=1)
    assert got.counts == expected.counts and got.prediction == expected.prediction and got.sigma == 0.25
    assert smoothed.predict(x, n=100, alpha=0.01, seed=1).counts == smoothing.predict(
        lambda z: module((z - mean) / std), x, 0.25, n=100, alpha=0.01, seed=1).counts


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sigma, message", [
    (None, "sigma is required: ViTForImageClassification has no trained sigma"),
    (64, r"sigma = 64 is larger than 1: it is in \[0, 1\] pixel units .* 0-255 units divide by 255"),
    (255.0, "divide by 255"),
    (-0.25, r"sigma must be a number in \(0, 1\]"),
    (0.0, r"sigma must be a number in \(0, 1\]"),
    (float("nan"), r"sigma must be a number in \(0, 1\]"),
    ("0.25", r"sigma must be a number in \(0, 1\]"),
])
def test_sigma_is_required_and_in_pixel_units(sigma, message, saved):
    with pytest.raises(ValueError, match=message):
        pipeline(TASK, model=str(saved["vit"][0]), sigma=sigma, device="cpu")


@pytest.mark.timeout(60)
def test_dmae_classifiers_keep_their_sigma_and_their_certificates(tmp_path, cifar10_test_images):
    path = build_classifier(tmp_path / "dmae")
    certifier = pipeline(TASK, model=str(path), device="cpu")
    images, _ = cifar10_test_images
    x = certifier.preprocess(images[2])["pixel_values"][0]
    assert certifier(images[2], **SMALL)["pA_lower"] == certifier.model.certify(x, **SMALL).pA_lower
    assert pipeline(TASK, model=str(path), sigma=0.25, device="cpu").smoothed.sigma == 0.25  # its own: allowed
    with pytest.raises(ValueError, match="trained for sigma = 0.25, not 0.5"):
        pipeline(TASK, model=str(path), sigma=0.5, device="cpu")
    assert pipeline(TASK, model=str(path), sigma=0.5, override_sigma=True, device="cpu")(images[2], **SMALL)[
        "sigma_override"] is True


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_cli_certifies_and_predicts_any_classifier(name, saved, data_dir, tmp_path, capsys):
    path, model, processor = saved[name]
    out = tmp_path / "vit.tsv"
    args = ["certify", "--model", str(path), "--sigma", "0.25", "--dataset", str(data_dir / "cifar10"), "--split",
            "test", "--max", "3", "--image-column", "img", "--n0", "10", "--n", "100", "--alpha", "0.01", "--batch",
            "64", "--seed", "5", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    rows = read_rows(out)
    assert sorted(rows) == [0, 1, 2]
    f = hand_built_f(model, processor)
    examples = list(datasets.load_dataset(str(data_dir / "cifar10"), split="test", streaming=True).take(3))
    for idx, example in enumerate(examples):
        x = torch.from_numpy(processor(example["img"], do_normalize=False, return_tensors="np")["pixel_values"][0])
        expected = smoothing.certify(f, x, 0.25, n0=10, n=100, alpha=0.01, batch_size=64, seed=image_seed(5, idx))
        fields = rows[idx].split("\t")
        assert int(fields[2]) == (-1 if expected.prediction is None else expected.prediction)
        assert float(fields[6]) == pytest.approx(expected.pA_lower, abs=1e-6)
    settings = json.loads(out.with_name("vit.tsv.json").read_text())
    assert settings["sigma"] == 0.25 and "denoiser" not in settings

    capsys.readouterr()
    image = tmp_path / "cat.png"
    examples[0]["img"].save(image)
    assert main(["predict", str(image), "--model", str(path), "--sigma", "0.25", "--n0", "10", "--n", "100",
                 "--alpha", "0.01", "--batch", "64", "--seed", "5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = pipeline(TASK, model=str(path), sigma=0.25, device="cpu")(str(image), n0=10, n=100, alpha=0.01,
                                                                         batch_size=64, seed=5)
    assert printed == [{"image": str(image), **expected}]

    assert main(["predict", str(image), "--model", str(path), "--n", "100"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (not the loading bar)
    assert len(err) == 1 and err[0].startswith("dmae predict: error: sigma is required") and "--sigma 0.25" in err[0]


# ----------------------------------------------------------------------------------------------------------- denoiser
@pytest.mark.timeout(60)
def test_denoise_undoes_the_decoders_pixel_scale(cifar10_test_images):
    """With a decoder that predicted its target exactly, `denoise` returns the clean image: exactly for
    `norm_pix_loss=False`; from the noisy patch's mean and variance (less the noise's) for `norm_pix_loss=True`,
    with a much smaller error than the noisy image's and than the same restoration without the variance correction."""
    images, _ = cifar10_test_images
    clean = DMAEImageProcessor.for_cifar10()(images[:8], return_tensors="pt").pixel_values
    noisy = smoothing.add_gaussian_noise(clean, 0.25, torch.Generator().manual_seed(0))
    for norm_pix_loss in (False, True):
        model = build_denoiser(norm_pix_loss=norm_pix_loss)
        target = model.patchify(model.preprocess_pixels(clean))
        if norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        model.decoder.forward = lambda hidden, ids_restore, target=target: torch.cat(
            [torch.zeros_like(target[:, :1]), target], 1)[:, 1:]
        restored = model.denoise(noisy)
        assert restored.shape == clean.shape and 0 <= restored.min() and restored.max() <= 1
        error = ((restored - clean) ** 2).mean().item()
        if not norm_pix_loss:
            assert error < 1e-10
        else:
            assert error < 0.1 * ((noisy.clamp(0, 1) - clean) ** 2).mean().item()
            model.config.noise_sigma = 0.0  # no variance correction: the patches come out too contrasted
            assert ((model.denoise(noisy) - clean) ** 2).mean().item() > 2 * error


@pytest.mark.timeout(120)
def test_denoiser_in_front_of_a_classifier_end_to_end(saved, tmp_path, cifar10_test_images, data_dir, capsys):
    path, model, processor = saved["vit"]
    denoiser_dir = tmp_path / "denoiser"
    denoiser = build_denoiser(denoiser_dir)
    certifier = pipeline(TASK, model=str(path), denoiser=str(denoiser_dir), device="cpu")  # sigma: the denoiser's
    assert certifier.smoothed.sigma == 0.25
    f = hand_built_f(model, processor)
    images, _ = cifar10_test_images
    for image in images[:3]:
        result = certifier(image, **SMALL)
        x = torch.from_numpy(processor(image, do_normalize=False, return_tensors="np")["pixel_values"][0])
        expected = smoothing.certify(lambda z: f(denoiser.denoise(z)), x, 0.25, n0=10, n=100, alpha=0.01,
                                     batch_size=64, seed=3)
        assert (result["class_id"], result["pA_lower"]) == (expected.prediction, pytest.approx(expected.pA_lower))
        assert result["denoiser"] == str(denoiser_dir)
    out = tmp_path / "denoised.tsv"
    assert main(["certify", "--model", str(path), "--denoiser", str(denoiser_dir), "--dataset",
                 str(data_dir / "cifar10"), "--max", "2", "--image-column", "img", "--n0", "10", "--n", "50",
                 "--no-progress", "--out", str(out)]) == 0
    assert sorted(read_rows(out)) == [0, 1]
    assert json.loads(out.with_name("denoised.tsv.json").read_text())["denoiser"] == str(denoiser_dir)
    capsys.readouterr()
    assert main(["certify", "--model", str(path), "--sigma", "0.25", "--dataset", str(data_dir / "cifar10"),
                 "--max", "3", "--image-column", "img", "--n0", "10", "--n", "50", "--out", str(out)]) == 2
    assert "denoiser=" in capsys.readouterr().err  # resuming without the denoiser is refused, not mixed


@pytest.mark.timeout(60)
def test_denoiser_refusals(saved, tmp_path):
    vit_path = str(saved["vit"][0])
    build_denoiser(tmp_path / "d05", sigma=0.5)
    build_denoiser(tmp_path / "mae", sigma=0.0)
    build_denoiser(tmp_path / "d64", image_size=64)
    cases = [
        (dict(denoiser=str(build_classifier(tmp_path / "clf"))),
         "not a DMAE pre-training checkpoint .it holds DMAEForSmoothed.*decoder"),
        (dict(denoiser=str(tmp_path / "d05"), sigma=0.25), "trained for sigma = 0.5, not 0.25.*override_sigma"),
        (dict(denoiser=str(tmp_path / "mae")), "without noise"),
        (dict(denoiser=torch.nn.Identity(), sigma=0.25), "denoiser must be a DMAEForPreTraining"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            pipeline(TASK, model=vit_path, device="cpu", **kwargs)
    certifier = pipeline(TASK, model=vit_path, denoiser=str(tmp_path / "d64"), device="cpu")
    with pytest.raises(ValueError, match=r"gives \(32, 32\) pixel values, not the model's \(64, 64\)"):
        certifier(torch.zeros(32, 32, 3, dtype=torch.uint8).numpy(), **SMALL)


@pytest.mark.timeout(120)
def test_certificates_with_a_denoiser_in_front_are_sound():
    """The soundness check of `test_smoothing_soundness.py` with f = h(D(x~)), D a DMAE denoiser: h thresholds the
    mean of the denoised image at the 30% quantile of 60,000 reference draws, so P(f(x + eps) = 1) = 0.7 up to the
    reference's error (+-0.006 at 3 standard errors, added to the bound below). Over 300 independent CERTIFY trials
    (n = 100, alpha = 0.1), the rate of certificates with pA_lower above the true pA must not be significantly
    above alpha."""
    torch.manual_seed(0)
    denoiser = DMAEForPreTraining(DMAEConfig.from_preset("tiny", noise_sigma=0.5, image_size=8, patch_size=4)).eval()
    x = torch.full((3, 8, 8), 0.5)
    reference = smoothing.add_gaussian_noise(x.expand(60_000, -1, -1, -1), 0.5, torch.Generator().manual_seed(99))
    with torch.no_grad():
        t = torch.cat([denoiser.denoise(chunk).mean(dim=(1, 2, 3)) for chunk in reference.split(20_000)])
    threshold = torch.quantile(t.double(), 0.3).item()
    bound = {1: 0.7 + 0.006, 0: 0.3 + 0.006}

    class Threshold(torch.nn.Module):  # h: class 1 when the (denoised) image's mean is above the threshold
        def forward(self, image):
            score = image.mean(dim=(1, 2, 3)).double() - threshold
            return torch.stack([-score, score], dim=1).float()

    smoothed = SmoothedClassifier(Threshold().eval(), denoiser=denoiser)  # sigma: the denoiser's 0.5
    trials, failures, certified = 300, 0, 0
    for seed in range(trials):
        cert = smoothed.certify(x, n0=10, n=100, alpha=0.1, seed=seed, batch_size=110)
        certified += cert.prediction is not None
        failures += cert.prediction is not None and cert.pA_lower > bound[cert.prediction]
    assert certified > trials // 2  # pA = 0.7 certifies often at n = 100, so the check has something to check
    assert binomtest(failures, trials, 0.1, alternative="greater").pvalue > 1e-3, failures
