"""What the `certified-image-classification` pipeline does with inputs that are not the model's 32x32 RGB images:
real photos are resized before the noise, oversized and broken inputs are refused with a `ValueError` that names
the problem, a bad entry of a list does not lose the others, and `dmae predict` goes on past a bad file."""

import inspect
import struct
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline import KEYS, TASK, build_classifier, check_result
from transformers import pipeline

import dmae_hf
from dmae_hf import defaults, pipeline_dmae
from dmae_hf.cli import build_parser

ASSETS = Path(dmae_hf.__file__).parent / "assets" / "cifar10"
CAT = ASSETS / "test_00003_cat.png"
SMALL = dict(n0=10, n=100, alpha=0.01, batch_size=100, seed=3)


def png_header(path, width, height):
    """A PNG whose header claims width x height RGB pixels, followed by junk data (never decodable)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"junk") + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def certifier(tmp_path_factory):
    return pipeline(TASK, model=str(build_classifier(tmp_path_factory.mktemp("classifier"))), device="cpu")


@pytest.fixture(scope="module")
def photo(data_dir):
    """A real 1024x683 ImageNet validation photo."""
    image = datasets.load_dataset(str(data_dir / "imagenet-sample"), split="validation")[10]["image"]
    assert image.size == (1024, 683)
    return image


def record_noisy_shapes(certifier, monkeypatch):
    """The shapes of the noisy batches the base classifier sees."""
    shapes, real = [], certifier.model.base_classifier
    monkeypatch.setattr(certifier.model, "base_classifier", lambda x: shapes.append(tuple(x.shape[1:])) or real(x))
    return shapes


@pytest.mark.timeout(60)
def test_a_photo_is_resized_to_the_model_input_before_the_noise(photo, caplog, monkeypatch):
    certifier = pipeline(TASK, model="dmae-tiny-cifar10", device="cpu")
    shapes = record_noisy_shapes(certifier, monkeypatch)
    result = certifier(photo, **SMALL)
    check_result(result)
    assert result["resolution"] == [32, 32] and set(shapes) == {(3, 32, 32)}
    assert result["shrink"] == 1024 / 32  # the long side: resized 683 -> 32, then cropped
    assert "shrunk 32.0x on a side (resized and cropped) to reach the model's 32x32 input" in result["note"]
    # Independently: shortest edge 683 -> 32 (1024 -> 48, bicubic), then the central 32x32.
    small = photo.resize((48, 32), Image.BICUBIC).crop((8, 0, 40, 32))
    assert certifier(small, **SMALL) == {**result, "shrink": 1.0, "note": None}  # the same certificate, not shrunk
    assert certifier(np.asarray(photo), **SMALL) == result
    notes = [r.getMessage() for r in caplog.records if "resized to the model's 32x32 input" in r.getMessage()]
    assert len(notes) == 1 and "1024x683" in notes[0]  # once per pipeline, not per image
    with pytest.raises(ValueError, match="1024x683 after processing, not the model's 32x32 input, and resize=False"):
        certifier(photo, resize=False, **SMALL)
    assert certifier(small, resize=False, **SMALL)["pA_lower"] == result["pA_lower"]


@pytest.mark.timeout(60)
def test_a_large_image_is_certified_at_the_model_input(certifier, monkeypatch):
    """24 megapixels (a broadcast view: no memory) are downsized first: the noise is drawn at 3x32x32."""
    shapes = record_noisy_shapes(certifier, monkeypatch)
    large = np.broadcast_to(np.asarray(Image.open(CAT).resize((60, 40))).reshape(40, 1, 60, 1, 3),
                            (40, 100, 60, 100, 3)).reshape(4000, 6000, 3)
    result = certifier(large, **SMALL)
    check_result(result)
    assert result["resolution"] == [32, 32] and set(shapes) == {(3, 32, 32)}


BAD_INPUTS = [  # (id, input built from a temporary directory, expected message)
    ("empty list", lambda d: [], "No images given"),
    ("empty tensor batch", lambda d: torch.empty(0, 3, 32, 32), r"Empty batch of images \(shape \(0, 3, 32, 32\)\)"),
    ("0x10 PIL image", lambda d: Image.new("RGB", (0, 10)), "Empty image of 0x10 pixels"),
    ("0x10 numpy image", lambda d: np.zeros((0, 10, 3), np.uint8), r"Empty image array of shape \(0, 10, 3\)"),
    ("empty float tensor", lambda d: torch.empty(3, 0, 32), "Empty image tensor"),
    ("float PIL mode", lambda d: Image.new("F", (32, 32)), "'F' mode"),
    ("5 channels", lambda d: np.zeros((32, 32, 5), np.uint8), r"shape \(32, 32, 5\)"),
    ("4-D numpy", lambda d: np.zeros((2, 32, 32, 3), np.uint8), r"shape \(2, 32, 32, 3\)"),
    ("int64 dtype", lambda d: np.zeros((32, 32, 3), np.int64), "dtype int64"),
    ("bool tensor", lambda d: torch.zeros(3, 32, 32, dtype=torch.bool), "dtype bool"),
    ("NaN array", lambda d: np.full((32, 32, 3), np.nan, np.float32), "NaN"),
    ("NaN tensor", lambda d: torch.full((3, 32, 32), float("nan")), "NaN"),
    ("0-255 floats", lambda d: np.full((32, 32, 3), 200.0, np.float32), r"in \[0, 1\]"),
    ("0-255 float tensor", lambda d: torch.full((3, 32, 32), 200.0), r"in \[0, 1\]"),
    ("float tensor 3x64x64", lambda d: torch.rand(3, 64, 64), r"must be the model's input size \(3, 32, 32\)"),
    ("gray float tensor", lambda d: torch.rand(1, 32, 32), "1 channels but the model expects 3"),
    ("an int", lambda d: 42, "Unsupported image type int"),
    ("an object", lambda d: object(), "Unsupported image type object"),
    ("a text file", lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "Cannot read the image"),
    ("a truncated PNG", lambda d: (d / "cut.png").write_bytes(CAT.read_bytes()[:400]) and d / "cut.png",
     "Cannot read the image"),
    ("a missing file", lambda d: str(d / "missing.png"), "No image file at"),
    ("a directory", lambda d: str(d), "is a directory, not an image file"),
    ("60 MP PNG header", lambda d: png_header(d / "big.png", 8000, 7500),
     "8000x7500 = 60.0 megapixels, more than max_pixels = 50,000,000"),
    ("400 MP PNG header", lambda d: png_header(d / "bomb.png", 20000, 20000), "too large to decode"),
    ("100 MP array", lambda d: np.broadcast_to(np.uint8(0), (10000, 10000, 3)), "10000x10000 = 100.0 megapixels"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make, message", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_raise_a_value_error_naming_the_problem(certifier, tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        certifier(make(tmp_path), **SMALL)


@pytest.mark.timeout(60)
def test_max_pixels_is_a_class_attribute_and_a_call_argument(certifier, tmp_path):
    assert pipeline_dmae.RandomizedSmoothingPipeline.max_pixels == 50_000_000
    with pytest.raises(ValueError, match="32x32 = 0.0 megapixels, more than max_pixels = 1,000"):
        certifier(str(CAT), max_pixels=1000, **SMALL)
    # Allowed above the default: the header is accepted and decoding starts (and fails on the junk data).
    with pytest.raises(ValueError, match="Cannot read the image"):
        certifier(png_header(tmp_path / "big.png", 8000, 7500), max_pixels=100_000_000, **SMALL)
    with pytest.raises(ValueError, match="max_pixels must be a positive int"):
        certifier(str(CAT), max_pixels=-1, **SMALL)


@pytest.mark.timeout(60)
def test_a_list_reports_bad_entries_and_certifies_the_others(certifier, photo, tmp_path, caplog):
    images = [str(CAT), str(tmp_path / "missing.png"), np.full((32, 32, 3), np.nan, np.float32), photo]
    results = certifier(images, **SMALL)
    assert len(results) == 4
    assert results[0] == certifier(str(CAT), **SMALL) and results[3] == certifier(photo, **SMALL)
    for result, message in zip(results[1:3], ["No image file at", "NaN"], strict=True):
        assert set(result) == KEYS | {"error"} and message in result["error"]
        assert (result["label"], result["class_id"], result["radius"], result["pA_lower"], result["abstained"],
                result["resolution"]) == (None, None, 0.0, 0.0, True, None)
        assert (result["n0"], result["n"], result["alpha"], result["sigma"]) == (10, 100, 0.01, 0.25)
    skipped = [r.getMessage() for r in caplog.records if "image skipped" in r.getMessage()]
    assert len(skipped) == 2 and "missing.png" in skipped[0]
    with pytest.raises(ValueError, match="No image file at"):
        certifier(images, errors="raise", **SMALL)
    with pytest.raises(ValueError, match="errors must be 'raise' or 'report'"):
        certifier(images, errors="ignore", **SMALL)
    with pytest.raises(ValueError, match="n0 .* must not exceed n"):  # bad arguments are not a per-image problem
        certifier(images, **{**SMALL, "n0": 200})


@pytest.mark.timeout(60)
def test_a_tensor_batch_gives_one_result_per_image(certifier):
    files = sorted(ASSETS.glob("*.png"))[:3]
    batch = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files]))
    batch = batch.permute(0, 3, 1, 2).float() / 255
    assert certifier(batch, **SMALL) == [certifier(image, **SMALL) for image in batch]


@pytest.mark.timeout(60)
def test_progress_bar_by_default_for_long_certificates_only(certifier, capsys, monkeypatch):
    certifier(str(CAT), **SMALL)
    assert "noisy samples" not in capsys.readouterr().err  # n0 + n = 110 < 10,000
    certifier(str(CAT), progress=True, **SMALL)
    assert "noisy samples" in capsys.readouterr().err
    monkeypatch.setattr(pipeline_dmae, "PROGRESS_MIN_SAMPLES", 110)
    certifier(str(CAT), **SMALL)
    assert "110/110" in capsys.readouterr().err
    certifier(str(CAT), progress=False, **SMALL)
    assert "noisy samples" not in capsys.readouterr().err


def test_defaults_come_from_dmae_hf_defaults():
    forward = inspect.signature(pipeline_dmae.RandomizedSmoothingPipeline._forward).parameters
    expected = dict(n0=defaults.N0, n=defaults.N, alpha=defaults.ALPHA, batch_size=defaults.NOISE_BATCH,
                    seed=defaults.SEED)
    assert {name: forward[name].default for name in expected} == expected
    args = build_parser().parse_args(["predict", "cat.png"])
    assert (args.n0, args.n, args.alpha, args.batch, args.seed) == tuple(expected.values())
