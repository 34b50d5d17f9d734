"""Until `SmoothedClassifier.from_pretrained` / `preprocess` / `shrink_note` land (helper g): the same interface
over today's pipeline. Deleted when g lands."""

from dataclasses import dataclass

import torch

from .. import defaults


@dataclass
class Preprocessed:
    pixel_values: torch.Tensor
    shrink: float
    original_size: tuple


class PipelineG:
    def __init__(self, pipe):
        self.pipe, self.smoothed, self.model = pipe, pipe.smoothed, pipe.model
        self.sigma, self.sigma_override, self.denoiser_name = self.smoothed.sigma, False, pipe.denoiser_name
        self.id2label, self.input_size = self.smoothed.id2label, self.smoothed.input_size

    def parameters(self):
        return self.smoothed.parameters()

    def compile(self, **kwargs):
        self.smoothed.compile(**kwargs)

    def preprocess(self, image, max_pixels=None):
        from ..image_processing_dmae import decode_image

        image = decode_image(image, max_pixels)
        pixel_values = self.pipe.preprocess(image, max_pixels=max_pixels, errors="raise")["pixel_values"][0]
        shrink = max(image.size[1] / pixel_values.shape[-2], image.size[0] / pixel_values.shape[-1], 1.0)
        return Preprocessed(pixel_values, shrink, (image.size[1], image.size[0]))

    def shrink_note(self, shrink):
        if shrink <= defaults.MAX_SHRINK:
            return None
        return (f"the image was shrunk {shrink:.1f}x on a side to reach the model's input; the certificate is about "
                f"the small image")

    def certify(self, pixel_values, **kwargs):
        return self.smoothed.certify(pixel_values, **kwargs)


def load(args, device):
    from transformers import pipeline

    pipe = pipeline("certified-image-classification", model=args.model, sigma=args.sigma, denoiser=args.denoiser,
                    device=device, dtype=torch.float32)
    return PipelineG(pipe)
