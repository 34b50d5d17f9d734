# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Certified accuracy of a randomized-smoothing classifier (Cohen et al. 2019) as an `evaluate` metric.

Load it from the installed package (works offline, HF_HUB_OFFLINE=1):

    import evaluate
    from dmae_hf.certification.metrics import CERTIFIED_ACCURACY_PATH
    metric = evaluate.load(CERTIFIED_ACCURACY_PATH)
    metric.compute(predictions=[3, -1, 1], references=[3, 2, 1], certified_radii=[0.6, 0.0, 0.2],
                   radii=[0.0, 0.25, 0.5])
"""

import datasets
import evaluate

from dmae_hf.certification.analysis import ABSTAIN, CONFIDENCE, DEFAULT_RADII, certified_accuracy, is_correct

_DESCRIPTION = """
Certified accuracy at L2 radius r: the fraction of examples whose smoothed prediction is correct (not an abstention,
-1) and whose certified radius is at least r. Also the average certified radius (ACR: mean of radius over correct
examples, 0 for the others), the abstention rate and two-sided 95% Clopper-Pearson intervals. The same numbers as
`dmae analyze` / `dmae_hf.certification.analysis.analyze_logs` on a certification log.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class of the smoothed classifier, -1 for an abstention.
    references (`list` of `int`): true labels.
    certified_radii (`list` of `float`): certified L2 radius of each prediction (in [0, 1] pixel units; >= 0).
    radii (`list` of `float`, optional): radii at which to report certified accuracy.
        Defaults to [0.0, 0.25, 0.5, 0.75, 1.0].
    confidence (`float`, optional): level of the two-sided Clopper-Pearson intervals. Defaults to 0.95.
Returns:
    radii (`list` of `float`), certified_accuracy (`list` of `float`, fractions aligned with radii),
    confidence_intervals (`list` of `[lo, hi]`), acr (`float`), abstention_rate (`float`), n_images (`int`).
Examples:
    >>> metric = evaluate.load(CERTIFIED_ACCURACY_PATH)
    >>> metric.compute(predictions=[3, -1, 1], references=[3, 2, 1], certified_radii=[0.6, 0.0, 0.2], radii=[0, 0.5])
    {'radii': [0.0, 0.5], 'certified_accuracy': [0.666..., 0.333...], ..., 'acr': 0.2666..., ...}
"""

_CITATION = """
@inproceedings{cohen2019certified,
  title={Certified Adversarial Robustness via Randomized Smoothing},
  author={Cohen, Jeremy and Rosenfeld, Elan and Kolter, Zico},
  booktitle={International Conference on Machine Learning},
  year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CertifiedAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("int64"),
                "references": datasets.Value("int64"),
                "certified_radii": datasets.Value("float64"),
            }),
            reference_urls=["https://arxiv.org/abs/1902.02918", "https://arxiv.org/abs/2210.06983"],
        )

    def _compute(self, predictions, references, certified_radii, radii=DEFAULT_RADII, confidence=CONFIDENCE):
        stats = certified_accuracy(is_correct(predictions, references), certified_radii, radii, confidence)
        return {
            "radii": stats["radii"],
            "certified_accuracy": stats["certified_accuracy"],
            "confidence_intervals": [list(ci) for ci in stats["confidence_intervals"]],
            "acr": stats["acr"],
            "abstention_rate": sum(p == ABSTAIN for p in predictions) / len(predictions),
            "n_images": stats["n_images"],
        }
