"""The one decoder (`decode_image`) and the one dataset reader (`dmae_hf.image_datasets`), and resize/crop done
only by `DMAEImageProcessor`.

The pixel tests compare today's paths with the code they replaced (written out below as `old_*`), bit for bit, on
real CIFAR-10 and ImageNet photos."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dmae_hf.certification.inputs import DatasetSplit
from dmae_hf.image_datasets import IMAGE_COLUMNS, find_image_column, load_image_split
from dmae_hf.image_processing_dmae import DMAEImageProcessor, decode_image
from dmae_hf.training import streams

pytestmark = pytest.mark.timeout(60)


def cells(data_dir, folder, split, n):
    ds, column, _ = load_image_split(str(data_dir / folder), split)
    return [example[column] for example in ds.take(n)]


def old_training_decode(cell, shortest, crop):
    """`streams.ImageDecoder.decode` before: its own bicubic resize and center crop."""
    pil = DMAEImageProcessor().to_pil(Image.open(io.BytesIO(cell["bytes"])))
    if shortest is not None:
        w, h = pil.size
        scale = shortest / min(w, h)
        pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    if crop is not None:
        w, h = pil.size
        left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
        pil = pil.crop((left, top, left + crop, top + crop))
    return np.asarray(pil, dtype=np.uint8).transpose(2, 0, 1).copy()


def old_pipeline_fit(pil, size):
    """The pipeline's fallback before (for a rescale-only processor): shortest edge to `size`, bicubic, center crop."""
    pil = pil.convert("RGB")
    w, h = pil.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        w, h = pil.size
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
        pil = pil.crop((left, top, left + size, top + size))
    return np.asarray(pil, dtype=np.float32).transpose(2, 0, 1) / 255.0


@pytest.mark.parametrize("folder, split, sizes", [
    ("cifar10", "test", [(None, None), (36, 32), (32, 32)]),
    ("imagenet-sample", "validation", [(None, None), (256, 224), (256, 256), (36, 32)]),
])
def test_training_decode_is_the_old_pixels_bit_for_bit(data_dir, folder, split, sizes):
    photos = cells(data_dir, folder, split, 8 if folder == "cifar10" else 20)
    for shortest, crop in sizes:
        decoder = streams.ImageDecoder(shortest, crop)
        for cell in photos:
            new, old = decoder.decode(cell), old_training_decode(cell, shortest, crop)
            assert new.dtype == old.dtype == np.uint8 and new.flags["C_CONTIGUOUS"]
            assert np.array_equal(new, old), (folder, shortest, crop)


def test_pipeline_fallback_is_the_old_pixels_bit_for_bit(data_dir):
    """The rescale-only processor (no checkpoint processor) plus `fit`, as `RandomizedSmoothingPipeline` does it."""
    processor = DMAEImageProcessor.for_cifar10()
    photos = cells(data_dir, "imagenet-sample", "validation", 20) + cells(data_dir, "cifar10", "test", 4)
    for cell in photos:
        for size in (32, 224):
            image = processor.resize_and_crop(decode_image(cell))
            new = processor.to_array(processor.fit(image, size))
            assert np.array_equal(new, old_pipeline_fit(Image.open(io.BytesIO(cell["bytes"])), size))
        assert np.array_equal(processor(decode_image(cell), size=224).pixel_values[0].numpy(),
                              old_pipeline_fit(Image.open(io.BytesIO(cell["bytes"])), 224))


def test_every_form_of_an_image_decodes_to_the_same_pixels(data_dir, tmp_path):
    cell = cells(data_dir, "imagenet-sample", "validation", 1)[0]
    path = tmp_path / "photo.jpg"
    path.write_bytes(cell["bytes"])
    reference = np.asarray(Image.open(path).convert("RGB"))
    forms = [cell, cell["bytes"], str(path), path, {"bytes": None, "path": str(path)}, Image.open(path), reference,
             reference.transpose(2, 0, 1), torch.from_numpy(reference.copy())]
    for value in forms:
        image = decode_image(value)
        assert isinstance(image, Image.Image) and np.array_equal(np.asarray(image.convert("RGB")), reference)


def test_bad_values_raise_a_value_error_naming_the_problem(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (120, 100)).save(png, format="PNG")
    (tmp_path / "cut.png").write_bytes(png.getvalue()[:60])
    cases = [
        (b"not an image at all", r"Cannot read the image: UnidentifiedImageError"),
        ({"bytes": png.getvalue()[:60], "path": None}, r"Cannot read the image: OSError"),  # truncated
        (tmp_path / "cut.png", r"Cannot read the image '.*cut.png': OSError"),
        (str(tmp_path / "missing.png"), "No image file at '.*missing.png': check the path"),
        (str(tmp_path), "is a directory, not an image file"),
        ({"bytes": None, "path": None}, "No image data"),
        (42, "Unsupported image type int"),
        (np.zeros((5, 5, 2), np.uint8), r"Unsupported image array shape \(5, 5, 2\)"),
    ]
    for value, message in cases:
        with pytest.raises(ValueError, match=message):
            decode_image(value)
    for value in (png.getvalue(), np.zeros((100, 120, 3), np.uint8), Image.new("RGB", (120, 100))):
        with pytest.raises(ValueError, match=r"120x100 = 0.0 megapixels, more than max_pixels = 10,000"):
            decode_image(value, max_pixels=10_000)
        assert decode_image(value, max_pixels=12_000).size == (120, 100)


def test_one_reader_finds_the_columns_by_one_rule(data_dir):
    import datasets

    for folder, split, column in (("cifar10", "test", "img"), ("imagenet-sample", "validation", "image")):
        ds, image_column, label_column = load_image_split(str(data_dir / folder), split)
        assert (image_column, label_column) == (column, "label") and list(ds.features) == [column, "label"]
        assert ds.features[column] == datasets.Image(decode=False)  # left encoded
        certify_view = DatasetSplit(str(data_dir / folder), split)
        assert (certify_view.image_column, certify_view.label_column) == (column, "label")  # `dmae certify` ...
        train_view = streams.load_image_stream(str(data_dir / folder), split)
        assert next(iter(train_view))["image"] == next(iter(ds))[column]  # ... and for training (renamed)
    image = datasets.Image()
    assert find_image_column({"label": None, "jpg": image, "png": image}) == "jpg"  # webdataset: by name
    assert find_image_column({"photo": image, "label": None}) == "photo"  # otherwise: by feature type
    assert find_image_column({"mask": image, "image": image}) == "image"  # a named column wins
    assert find_image_column({"text": datasets.Value("string")}) is None
    assert IMAGE_COLUMNS[:2] == ("image", "img")
