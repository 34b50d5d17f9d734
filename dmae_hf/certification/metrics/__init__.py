"""`evaluate` metrics shipped with dmae-hf, loadable offline from the installed package:

    import evaluate
    from dmae_hf.certification.metrics import CERTIFIED_ACCURACY_PATH
    metric = evaluate.load(CERTIFIED_ACCURACY_PATH)
"""

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
CERTIFIED_ACCURACY_PATH = str(METRICS_DIR / "certified_accuracy")
