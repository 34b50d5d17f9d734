"""The `certified-image-classification` pipeline without dmae-hf installed: a classifier pushed by dmae-hf carries
`custom_pipelines` and the pipeline's flat files, so `pipeline(..., trust_remote_code=True)` runs it from the Hub
(here the loopback one); with dmae-hf installed, the registered pipeline serves the same repository."""

import json
import os
import re
import subprocess
import sys

import pytest
from hub_server import FakeHub, point_client_at
from test_pipeline import build_classifier
from transformers import AutoImageProcessor, pipeline

import dmae_hf
from dmae_hf import DMAEForSmoothedClassification
from dmae_hf.remote_code import portable_files

REPO = "tester/dmae-tiny-remote"
CALL = dict(n0=10, n=200, alpha=0.01, seed=4)

CONSUMER = f"""
import json, sys
sys.modules["dmae_hf"] = None  # dmae-hf cannot be imported in this process
from transformers import pipeline
try:
    pipeline("certified-image-classification", model={REPO!r})
except ValueError as error:
    print("WITHOUT-TRUST " + str(error).splitlines()[0])
certifier = pipeline("certified-image-classification", model={REPO!r}, trust_remote_code=True)
print("MODULE " + type(certifier).__module__ + " " + type(certifier.model).__module__)
print("RESULT " + json.dumps(certifier(sys.argv[1], **{CALL!r})))
"""


@pytest.mark.timeout(180)
def test_pushed_classifier_certifies_through_remote_code_without_the_package(tmp_path, monkeypatch,
                                                                            cifar10_test_images):
    images, _ = cifar10_test_images
    image = tmp_path / "image.png"
    images[4].save(image)
    build_classifier(tmp_path / "local")
    with FakeHub() as hub:
        point_client_at(monkeypatch, hub.endpoint, tmp_path / "cache")
        DMAEForSmoothedClassification.from_pretrained(tmp_path / "local").push_to_hub(REPO)
        AutoImageProcessor.from_pretrained(tmp_path / "local").push_to_hub(REPO)
        files = hub.repos[REPO].files
        assert {"pipeline_dmae.py", "smoothed_classifier.py", "modeling_dmae.py", "smoothing.py",
                "image_processing_dmae.py", "configuration_dmae.py", "defaults.py", "input_checks.py",
                "load_report.py", "remote_code.py"} <= set(files)
        assert {path.name for path in portable_files()} <= set(files)
        assert json.loads(files["config.json"])["custom_pipelines"]["certified-image-classification"]["impl"] == \
            "pipeline_dmae.RandomizedSmoothingPipeline"

        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                                 "PYTHONPATH")}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1",
                   HF_MODULES_CACHE=str(tmp_path / "modules"))
        result = subprocess.run([sys.executable, "-c", CONSUMER, str(image)], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=150)
        assert result.returncode == 0, result.stderr[-4000:]
        assert re.search(r"WITHOUT-TRUST .*contains custom code", result.stdout), result.stdout[-3000:]
        lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("MODULE ",
                                                                                                   "RESULT ")))
        assert lines["MODULE"].startswith("transformers_modules.") and " transformers_modules." in lines["MODULE"]
        remote = json.loads(lines["RESULT"])

        # installed: no trust_remote_code needed, dmae-hf's own pipeline class, the same certificate
        certifier = pipeline("certified-image-classification", model=REPO, device="cpu")
        assert type(certifier) is dmae_hf.RandomizedSmoothingPipeline
        local = certifier(str(image), **CALL)
        trusted = pipeline("certified-image-classification", model=REPO, device="cpu", trust_remote_code=True)
        assert type(trusted) is dmae_hf.RandomizedSmoothingPipeline  # installed: still the registered one
    assert remote == local
    assert local["abstained"] is False  # the comparison covers a certificate with a radius
