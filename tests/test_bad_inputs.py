"""Bad input anywhere (certify/predict arguments, base classifiers, configs, conversion) gets a `ValueError` that
names the problem where the value enters, never a silent wrong answer; NaN classifiers, configs and weights never
certify."""

import json
import math
import os
import re

import pytest
import torch
from transformers import (
    AutoModelForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    pipeline,
)
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.modeling_outputs import ImageClassifierOutput

from dmae_hf import DMAEConfig, DMAEForPreTraining, DMAEForSmoothedClassification, SmoothedClassifier
from dmae_hf.hub.convert import CheckpointError, convert, official_name
from dmae_hf.smoothing import certify, predict

X = torch.full((1, 4, 4), 0.5)
NAN, INF = math.nan, math.inf


def two_class(z):
    t = z.flatten(1).mean(1) - 0.5
    return torch.stack([-t, t], dim=1)


def returning(make):
    """A base classifier returning make(batch) instead of logits."""
    return lambda z: make(z)


def changing_classes():
    calls = []
    return lambda z: calls.append(0) or torch.zeros(z.shape[0], 2 + len(calls) // 2)


def run_certify(f=two_class, x=X, **kwargs):
    return certify(f, x, **{"sigma": 0.25, "n0": 10, "n": 100, **kwargs})


def config_json(tmp, **fields):
    """A saved tiny classifier's config.json with `fields` overwritten, loaded back by from_pretrained."""
    folder = tmp / f"config-{'-'.join(fields)}"
    DMAEConfig.from_preset("tiny", num_labels=10).save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text()) | fields
    (folder / "config.json").write_text(json.dumps(data))
    return DMAEConfig.from_pretrained(folder)


def tiny(**fields):
    return DMAEConfig.from_preset("tiny", num_labels=10, **fields)


def pretrain(**kwargs):
    """DMAEForPreTraining's forward on 2 images (or `pixel_values`), with `kwargs`."""
    torch.manual_seed(0)
    return DMAEForPreTraining(tiny())(**{"pixel_values": torch.rand(2, 3, 32, 32), **kwargs})


def finetune(labels):
    """The noisy fine-tuning loss of 2 images with `labels`."""
    torch.manual_seed(0)
    return DMAEForSmoothedClassification(tiny()).train()(torch.rand(2, 3, 32, 32), labels=labels)


def vit():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=64, num_labels=10)).eval()


class NamedOutput(BaseImageProcessor):
    """An image processor that gives `images`, not `pixel_values` (while claiming pixel_values)."""

    def preprocess(self, images, **kwargs):
        return BatchFeature({"images": torch.zeros(1, 3, 32, 32)})


class TextInputs(NamedOutput):
    model_input_names = ["input_ids"]


def certify_through_pipeline(processor, image=None):
    """The certified-image-classification pipeline of a tiny ViT with `processor`, on a 32x32 image."""
    certifier = pipeline("certified-image-classification", model=vit(), image_processor=processor, sigma=0.25)
    return certifier(image if image is not None else torch.zeros(32, 32, 3, dtype=torch.uint8).numpy(), n0=10, n=20)


def nan_folder(tmp, kind):
    """A saved classifier (DMAE or ViT) one of whose weights holds a NaN."""
    model = DMAEForSmoothedClassification(tiny()) if kind == "dmae" else vit()
    with torch.no_grad():
        model.classifier.weight[0, 0] = NAN
    model.save_pretrained(tmp / kind)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp / kind)
    return tmp / kind


ONE_LINE = r"\A[^\n]*1 weight tensor\(s\) hold NaN or Inf values: \['classifier\.weight'\][^\n]*\Z"


class CodeExecution:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def checkpoint(tmp, name, edit=None, payload=None):
    """A tiny classifier in the official layout (our names mapped back by `official_name`), edited, at tmp/name."""
    torch.manual_seed(0)
    model = DMAEForSmoothedClassification(DMAEConfig.from_preset("tiny", num_labels=10))
    sd = {official_name(k): v for k, v in model.state_dict().items()}
    if edit:
        edit(sd)
    path = tmp / name
    torch.save({"model": sd, **(payload or {})}, path)
    return path


def truncated(tmp):
    path = checkpoint(tmp, "good.pth")
    (tmp / "truncated.pth").write_bytes(path.read_bytes()[:2000])
    return tmp / "truncated.pth"


def under_a_file(tmp):
    (tmp / "a_file").write_text("x")
    return tmp / "a_file" / "out"


# (id, call(tmp), error type, regex the message must match: the argument/field name and the problem)
CASES = [
    # certify / predict arguments
    ("x int dtype", lambda t: run_certify(x=torch.zeros(1, 4, 4, dtype=torch.uint8)), ValueError, "floating-point"),
    ("x empty batch", lambda t: run_certify(x=torch.zeros(0, 1, 4, 4)), ValueError, "x is an empty batch"),
    ("x Inf pixel", lambda t: run_certify(x=torch.full((1, 4, 4), INF)), ValueError, "NaN or Inf"),
    ("x 5-D", lambda t: run_certify(x=torch.zeros(1, 1, 1, 4, 4)), ValueError, r"x must be a \(C, H, W\)"),
    ("sigma NaN", lambda t: run_certify(sigma=NAN), ValueError, "sigma must be a (finite )?number"),
    ("sigma bool", lambda t: run_certify(sigma=True), ValueError, "sigma must be"),
    ("sigma str", lambda t: run_certify(sigma="0.25"), ValueError, "sigma must be"),
    ("sigma 10**400", lambda t: run_certify(sigma=10**400), ValueError, r"sigma is far above 1: .*\(0, 1\]"),
    ("alpha NaN", lambda t: run_certify(alpha=NAN), ValueError, r"alpha must be in \(0, 1\)"),
    ("n float", lambda t: run_certify(n=100.5), ValueError, "n must be an integer >= 1"),
    ("n0 bool", lambda t: run_certify(n0=True), ValueError, "n0 must be an integer"),
    ("seed float", lambda t: run_certify(seed=2.0), ValueError, "seed must be an integer >= 0"),
    ("not callable", lambda t: run_certify(f="model"), ValueError, "base_classifier must be callable"),
    ("autocast float32", lambda t: run_certify(autocast_dtype=torch.float32), ValueError, "autocast_dtype"),
    ("distributed, no group", lambda t: run_certify(distributed=True), ValueError, "process group"),
    ("first_look 0", lambda t: run_certify(method="adaptive", first_look=0), ValueError, "first_look must be"),
    ("target_radius NaN", lambda t: run_certify(method="adaptive", target_radius=NAN), ValueError,
     "target_radius must be a finite number"),
    ("radius_tolerance Inf", lambda t: run_certify(method="adaptive", radius_tolerance=INF), ValueError,
     "radius_tolerance must be a finite"),
    ("predict n 0", lambda t: predict(two_class, X, 0.25, n=0), ValueError, "n must be an integer >= 1"),
    ("predict alpha 2", lambda t: predict(two_class, X, 0.25, n=10, alpha=2), ValueError, "alpha must be"),
    # base classifiers
    ("NaN logits", lambda t: run_certify(returning(lambda z: torch.full((len(z), 2), NAN))), ValueError,
     r"non-finite logits \(NaN or Inf\): forward batch 1 \(of 10 noisy samples\) has 20"),
    ("-Inf logits, predict", lambda t: predict(returning(lambda z: torch.full((len(z), 2), -INF)), X, 0.25, n=50),
     ValueError, "non-finite logits"),
    ("tuple output", lambda t: run_certify(returning(lambda z: (two_class(z),))), ValueError,
     "got a tuple.*logits tensor itself"),
    ("ModelOutput", lambda t: run_certify(returning(lambda z: ImageClassifierOutput(logits=two_class(z)))),
     ValueError, r"got a ImageClassifierOutput.*model\(x\)\.logits"),
    ("numpy output", lambda t: run_certify(returning(lambda z: two_class(z).numpy())), ValueError, "got ndarray"),
    ("(N, 0) logits", lambda t: run_certify(returning(lambda z: torch.zeros(len(z), 0))), ValueError,
     r"got shape \(10, 0\)"),
    ("empty output", lambda t: run_certify(returning(lambda z: torch.zeros(0, 2))), ValueError,
     r"got shape \(0, 2\)"),
    ("1-D output", lambda t: run_certify(returning(lambda z: z.flatten(1).mean(1))), ValueError,
     r"got shape \(10,\)"),
    ("int logits", lambda t: run_certify(returning(lambda z: two_class(z).long())), ValueError,
     "dtype torch.int64"),
    ("complex logits", lambda t: run_certify(returning(lambda z: two_class(z).to(torch.complex64))), ValueError,
     "dtype torch.complex64"),
    ("logits on meta", lambda t: run_certify(returning(lambda z: two_class(z).to("meta"))), ValueError,
     "logits on meta for inputs on cpu"),
    ("changing classes", lambda t: run_certify(changing_classes(), batch_size=4), ValueError,
     "returned 3 classes after 2"),
    # configs (built, or loaded from a config.json)
    ("smoothing_sigma NaN", lambda t: DMAEConfig(smoothing_sigma=NAN), ValueError,
     r"smoothing_sigma must be a number in \[0, 1\] .*, got nan"),
    ("noise_sigma Inf", lambda t: DMAEConfig(noise_sigma=INF), ValueError, r"noise_sigma .*\[0, 1\] .*, got inf"),
    ("smoothing_sigma 25", lambda t: DMAEConfig(smoothing_sigma=25), ValueError,
     r"smoothing_sigma = 25 is larger than 1: .*divide by 255"),
    ("hidden_size str", lambda t: DMAEConfig.from_preset("tiny", hidden_size="32"), ValueError,
     "DMAEConfig: Field 'hidden_size' expected int, got str"),
    ("mlp_ratio 0", lambda t: DMAEConfig(mlp_ratio=0), ValueError, r"mlp_ratio .*\(0, inf\), got 0"),
    ("mlp_ratio tiny", lambda t: DMAEConfig(mlp_ratio=1e-4), ValueError, "mlp_ratio .*MLP of 0 units"),
    ("num_labels 0", lambda t: DMAEConfig(num_labels=0), ValueError, "num_labels must be an integer >= 1, got 0"),
    ("heads 0", lambda t: DMAEConfig(num_attention_heads=0), ValueError, "num_attention_heads must be an integer"),
    ("patch 0", lambda t: DMAEConfig(patch_size=0), ValueError, "patch_size must be an integer >= 1, got 0"),
    ("hidden_size -1", lambda t: DMAEConfig(hidden_size=-1), ValueError, "hidden_size must be an integer >= 1"),
    ("layers 0", lambda t: DMAEConfig(num_hidden_layers=0), ValueError, "num_hidden_layers must be"),
    ("patch > image", lambda t: DMAEConfig(image_size=32, patch_size=64), ValueError,
     r"patch_size \(64\) is larger than image_size \(32\)"),
    ("image % patch", lambda t: DMAEConfig(image_size=33, patch_size=16), ValueError,
     r"image_size \(33\) is not a multiple of patch_size \(16\)"),
    ("image_std 0", lambda t: DMAEConfig(image_std=[0.2, 0, 0.2]), ValueError, "image_std must hold finite .*> 0"),
    ("image_std NaN", lambda t: DMAEConfig(image_std=[NAN, 1, 1]), ValueError, r"image_std .*\[nan, 1\.0, 1\.0\]"),
    ("image_mean Inf", lambda t: DMAEConfig(image_mean=[0.5, INF, 0.5]), ValueError, "image_mean must hold finite"),
    ("image_std length", lambda t: DMAEConfig(image_std=[0.2, 0.2]), ValueError, "image_std needs 3 values"),
    ("mask_ratio NaN", lambda t: DMAEConfig(mask_ratio=NAN), ValueError, r"mask_ratio .*\[0, 1\), got nan"),
    ("dropout 1", lambda t: DMAEConfig(hidden_dropout_prob=1.0), ValueError, r"hidden_dropout_prob .*\[0, 1\)"),
    ("drop_path -0.1", lambda t: DMAEConfig(drop_path_rate=-0.1), ValueError, r"drop_path_rate .*\[0, 1\)"),
    ("config.json sigma -1", lambda t: config_json(t, smoothing_sigma=-1), ValueError, "smoothing_sigma must be"),
    ("config.json std NaN", lambda t: config_json(t, image_std=[NAN, 1, 1]), ValueError, "image_std must hold"),
    ("config.json heads 0", lambda t: config_json(t, num_attention_heads=0), ValueError,
     "num_attention_heads must be"),
    # model inputs
    ("pre-training empty batch", lambda t: pretrain(pixel_values=torch.rand(0, 3, 32, 32)), ValueError,
     r"pixel_values is an empty batch \(shape \(0, 3, 32, 32\)\)"),
    ("pixel_noise NaN", lambda t: pretrain(pixel_noise=torch.full((2, 3, 32, 32), NAN)), ValueError,
     "pixel_noise contains NaN or Inf"),
    ("pixel_noise shape", lambda t: pretrain(pixel_noise=torch.zeros(1, 3, 32, 32)), ValueError,
     r"pixel_noise must have shape \(2, 3, 32, 32\)"),
    ("soft labels -1", lambda t: finetune(torch.full((2, 10), -1.0)), ValueError,
     "Soft labels must be class weights >= 0 .*negative loss"),
    ("soft labels NaN", lambda t: finetune(torch.full((2, 10), NAN)), ValueError, "Soft labels contain NaN"),
    # smoothed classifier / pipeline: the image processor and normalisation
    ("processor gives no pixel_values", lambda t: certify_through_pipeline(NamedOutput()), ValueError,
     r"gave no pixel_values \(it gave \['images'\]\)"),
    ("processor of text", lambda t: certify_through_pipeline(TextInputs()), ValueError,
     r"image_processor must give pixel_values, and TextInputs gives \['input_ids'\]"),
    ("processor image_mean 2 values", lambda t: certify_through_pipeline(ViTImageProcessor(image_mean=[0.5, 0.5])),
     ValueError, "image_mean needs 3 values"),
    ("processor image_std 0", lambda t: certify_through_pipeline(ViTImageProcessor(image_std=0)), ValueError,
     r"image_std must hold finite numbers > 0, got \[0.0, 0.0, 0.0\]"),
    ("processor image_std NaN", lambda t: certify_through_pipeline(ViTImageProcessor(image_std=[0.2, NAN, 0.2])),
     ValueError, "image_std must hold finite numbers > 0"),
    ("module image_std 0", lambda t: SmoothedClassifier(vit(), sigma=0.25, image_mean=0.5, image_std=[1, 0, 1]),
     ValueError, r"image_std must hold finite numbers > 0, got \[1.0, 0.0, 1.0\]"),
    ("override_sigma str", lambda t: SmoothedClassifier(vit(), sigma=0.25, override_sigma="yes"), ValueError,
     "override_sigma must be True or False"),
    # a model folder whose weights hold NaN: one line, whatever the classifier
    ("NaN weight, DMAE folder", lambda t: SmoothedClassifier.from_pretrained(nan_folder(t, "dmae")), ValueError,
     ONE_LINE),
    ("NaN weight, ViT folder", lambda t: SmoothedClassifier.from_pretrained(nan_folder(t, "vit"), sigma=0.25),
     ValueError, ONE_LINE),
    # conversion
    ("NaN weights", lambda t: convert(checkpoint(t, "nan.pth", lambda sd: sd["head.weight"].fill_(NAN)), t / "o1",
                                      preset="tiny", sigma=0.25),
     CheckpointError, r"1 tensor\(s\) with NaN or Inf values: \['head\.weight'\]"),
    ("--sigma -1", lambda t: convert(t / "missing.pth", t / "o2", sigma=-1.0), CheckpointError,
     r"--sigma must be a number in \[0, 1\]"),
    ("--sigma NaN", lambda t: convert(t / "missing.pth", t / "o3", sigma=NAN), CheckpointError, "--sigma must be"),
    ("--sigma 0, classifier", lambda t: convert(checkpoint(t, "c.pth"), t / "o4", preset="tiny", sigma=0.0),
     CheckpointError, "pass --sigma > 0"),
    ("--num-labels 0", lambda t: convert(t / "missing.pth", t / "o5", num_labels=0), CheckpointError,
     "--num-labels must be an integer >= 1"),
    ("output under a file", lambda t: convert(t / "missing.pth", under_a_file(t)), CheckpointError,
     "a_file is a file, not a directory"),
    ("code-carrying pickle", lambda t: convert(checkpoint(t, "evil.pth", payload={"hook": CodeExecution()}),
                                               t / "o6", preset="tiny", sigma=0.25), CheckpointError,
     r"needs code execution .*system.*not allowed.*not corrupt"),
    ("truncated file", lambda t: convert(truncated(t), t / "o7", preset="tiny", sigma=0.25), CheckpointError,
     "corrupt or truncated"),
]


@pytest.mark.parametrize("call, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_message_naming_it(tmp_path, call, error, match):
    with pytest.raises(error, match=match):
        call(tmp_path)


def test_the_table_is_broad():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_int_mean_and_std_are_accepted_and_stored_as_floats(tmp_path):
    config = DMAEConfig(image_mean=(0, 0, 0), image_std=[1, 1, 1])
    assert config.image_std == [1.0, 1.0, 1.0] and all(type(v) is float for v in config.image_mean)
    config.save_pretrained(tmp_path)
    assert DMAEConfig.from_pretrained(tmp_path).image_std == [1.0, 1.0, 1.0]


def test_config_changed_to_nonsense_cannot_be_saved(tmp_path):
    config = DMAEConfig.from_preset("tiny")
    config.smoothing_sigma = NAN
    with pytest.raises(Exception, match="smoothing_sigma must be a number in"):  # strict's validate() wraps it
        config.save_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------- never certify
@pytest.mark.parametrize("call", [certify, predict])
def test_nan_classifier_never_certifies(call):
    nan_in_one_class = lambda z: torch.cat([two_class(z), torch.full((len(z), 1), NAN)], 1)  # noqa: E731
    with pytest.raises(ValueError, match="non-finite logits"):
        call(nan_in_one_class, X, 0.25, n=100)


def test_nan_config_never_builds_a_model(tmp_path):
    with pytest.raises(ValueError, match="image_std"):
        DMAEForSmoothedClassification(DMAEConfig.from_preset("tiny", num_labels=10, image_std=[NAN, 1, 1]))
    with pytest.raises(ValueError, match="image_std"):
        config_json(tmp_path, image_std=[NAN, 1, 1])


@pytest.mark.parametrize("weight, rows", [("classifier.weight", slice(3, 4)), ("dmae.layers.0.layernorm_before.weight",
                                                                                  slice(None))])
def test_nan_weights_are_refused_by_from_pretrained_and_never_certify(tmp_path, weight, rows):
    """One class's head row NaN (argmax would vote for that class every time), or a NaN LayerNorm (all logits): the
    saved checkpoint does not load (the tensor is named), and the model in memory never certifies."""
    torch.manual_seed(0)
    model = DMAEForSmoothedClassification(DMAEConfig.from_preset("tiny", num_labels=10)).eval()
    with torch.no_grad():
        model.get_parameter(weight)[rows] = NAN
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=rf"1 weight tensor\(s\) hold NaN or Inf values: \['{re.escape(weight)}'\]"):
        DMAEForSmoothedClassification.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=re.escape(weight)):
        AutoModelForImageClassification.from_pretrained(tmp_path)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"non-finite logits .*forward batch 1 \(of 10 noisy samples\)"):
        model.certify(image, n0=10, n=50, alpha=0.01)
    with pytest.raises(ValueError, match="non-finite logits"):
        model.predict(image, n=50, alpha=0.01)


def test_out_of_range_overrides_are_refused_by_from_pretrained(tmp_path):
    DMAEForSmoothedClassification(DMAEConfig.from_preset("tiny", num_labels=10)).save_pretrained(tmp_path)
    for override, field in [({"smoothing_sigma": NAN}, "smoothing_sigma"), ({"mask_ratio": 1.5}, "mask_ratio")]:
        with pytest.raises(ValueError, match=field):
            DMAEForSmoothedClassification.from_pretrained(tmp_path, **override)
    assert DMAEForSmoothedClassification.from_pretrained(tmp_path, smoothing_sigma=0.5).config.smoothing_sigma == 0.5
