"""The web demo (`dmae_hf.web`, `dmae serve`, `spaces/dmae-certify`).

The browser test (`test_browser_*`) pushes the Space to the loopback fake Hub with `dmae serve --push-space`, runs the
pushed `app.py` on a loopback port and drives a headless Chromium (Selenium, the Debian `chromium` and
`chromium-driver`; `.ci/install-browser` installs them). It runs in CI; deselect it explicitly with
`-k "not browser"`. `DMAE_WEB_SCREENSHOT=docs/web-demo.png` saves the page after the certification there.
The hostile visitor's view of the same server is `test_web_hostile.py`.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import SpaceCard
from PIL import Image

from dmae_hf import defaults
from dmae_hf.hub.names import SHORT_NAMES, repo_id
from dmae_hf.web import REFUSED, ServerSettings, certify_image, default_settings, example_images, stage_space
from dmae_hf.web.certifier import TARGET_RADII
from dmae_hf.web.space import SPACE_DIR, SPACE_FILES

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ASSETS = REPO_ROOT / "dmae_hf" / "assets" / "cifar10"
CAT = ASSETS / "test_00003_cat.png"
CLEAN_VIT, DENOISER = "vit-tiny-cifar10-clean", "dmae-tiny-cifar10-denoiser"


# --------------------------------------------------------------------------------------------- the plain function
def test_certify_image_gives_the_certificate_the_page_shows(tmp_path):
    image = Image.open(CAT)
    path = tmp_path / "upload.png"
    image.save(path)
    result = certify_image(path)
    names = list(result.counts)
    assert len(names) == 10 and names[3] == "cat"
    assert result.method == "sequential" and result.target_radius == (0.25, 0.5) and result.sigma == 0.25
    assert result.model_sigma == 0.25 and not result.sigma_override and result.denoiser is None
    assert result.resolution == (32, 32) and result.clean.shape == result.perturbed.shape == (32, 32, 3)
    assert (result.clean == np.asarray(image.convert("RGB"))).all()  # 32x32 already: the pixels as uploaded
    # the sequential method stopped early (that is what makes the page fast); the votes are the estimation votes
    assert result.num_samples < result.n0 + result.n
    assert sum(result.counts.values()) == result.num_samples - result.n0
    summary = result.summary()
    assert defaults.CERTIFICATE_CAVEAT in summary and result.shrink_note is None
    if result.abstained:
        assert result.radius == 0 and "Abstain" in summary
    else:
        assert result.label == max(result.counts, key=result.counts.get)
        assert 0 < result.radius and 0.5 < result.pA_lower < 1
        assert f"Prediction: {result.label}" in summary and f"{result.radius:.3f}" in summary
        assert "with probability 1 - alpha = 99.9% over the sampling" in summary
        # the perturbed image is the clean one moved by (at most) the radius
        assert result.perturbation_norm <= result.radius + 1e-6 and result.perturbation_norm > 0.5 * result.radius
    assert len(result.noisy) == 6 and all(v in names for _, v in result.noisy)
    assert result.noisy[0][0].shape == (32, 32, 3) and (result.noisy[0][0] != result.clean).any()
    histogram = result.histogram_html()
    assert all(f">{name}<" in histogram and f">{count}<" in histogram for name, count in result.counts.items())

    # the clean ViT behind the shipped DMAE denoiser: g takes the denoiser's sigma; cohen ignores the targets
    other = certify_image(CAT, model=CLEAN_VIT, denoiser=DENOISER, method="cohen", n=300)
    assert other.sigma == other.model_sigma == 0.25 and other.denoiser == DENOISER
    assert other.num_samples == 400 and other.target_radius is None
    assert f"{CLEAN_VIT} behind the denoiser {DENOISER}" in other.summary()
    # a photo shrunk 8x to 32x32 says so
    photo = next(path for path, caption in example_images() if caption.startswith("ImageNet"))
    assert "shrunk" in certify_image(photo, method="cohen", n=100).summary()


def test_another_sigma_needs_the_override_and_is_recorded():
    result = certify_image(CAT, sigma=0.3, override_sigma=True, method="cohen", n=300)
    assert result.sigma == 0.3 and result.sigma_override and "override_sigma" in result.summary()


def test_the_method_options_reach_g_for_every_method_that_takes_them():
    """Sequential takes the page's target radii too (defaults.METHODS): it stops early only with them."""
    with_targets = certify_image(CAT, method="sequential", n=2000)
    without = certify_image(CAT, method="sequential", n=2000, target_radius=None)
    assert with_targets.target_radius == TARGET_RADII and "target radii 0.25, 0.5" in with_targets.summary()
    assert with_targets.num_samples < without.num_samples  # stopped once the target radius was out of reach
    assert without.target_radius is None
    with pytest.raises(ValueError, match="radius_tolerance must be a finite number"):
        certify_image(CAT, method="sequential", n=300, radius_tolerance=-1.0)


BAD_UPLOADS = {
    "not an image": (lambda p: p.write_text("just text"), "Cannot read the image 'upload.png'"),
    "truncated png": (lambda p: p.write_bytes(CAT.read_bytes()[:300]), "image file is truncated"),
    "too many bytes": (lambda p: p.write_bytes(CAT.read_bytes() + b"\0" * 30_000),
                       "is too large (0.0325 MB, the limit is 0.03 MB)"),
    "too many pixels": (lambda p: Image.new("L", (3000, 2000)).save(p), "3000x2000 = 6.0 megapixels"),
    "empty file": (lambda p: p.write_bytes(b""), "Cannot read the image 'upload.png'"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_get_a_message_that_names_the_problem(tmp_path, case):
    write, message = BAD_UPLOADS[case]
    path = tmp_path / "upload.png"
    write(path)
    settings = ServerSettings.build(environ={}, max_bytes=30_000, max_pixels=5_000_000)
    with pytest.raises(ValueError) as info:
        certify_image(path, settings=settings)
    assert message in str(info.value) and str(tmp_path) not in str(info.value)  # the name, not the server's path


@pytest.mark.parametrize("kwargs, message", [
    ({"image": None}, "No image: upload an image file"),
    ({"n0": 500, "n": 100}, "n0 (500) must not exceed n (100)"),
    ({"n": 10.5}, "n must be a whole number"),
    ({"n": 10**12}, "n is over this server's limit (about 1e12): n0 + n must be at most 20,000"),
    ({"alpha": 0}, "alpha must be a number in (0, 1)"),
    ({"sigma": -0.1}, "sigma must be a number in (0, 1]"),
    ({"sigma": 25}, "For a value in 0-255 units divide by 255 (25 / 255 = 0.09804)"),
    ({"sigma": 0.3}, "This model was trained for sigma = 0.25, not 0.3"),
    ({"model": CLEAN_VIT}, "sigma is required: this model was not trained for a noise level"),
    ({"method": "fast"}, "method must be one of cohen, adaptive"),
    ({"model": "dmae-nope"}, REFUSED),
    ({"model": "dmae-vit-base-sigma0.25"}, REFUSED),
    ({"model": ""}, REFUSED),
    ({"denoiser": str(REPO_ROOT / "dmae_hf" / "checkpoints" / DENOISER)}, REFUSED),
])
def test_bad_settings_get_a_message(kwargs, message):
    with pytest.raises(ValueError) as info:
        certify_image(**{"image": CAT, **kwargs})
    assert message in str(info.value)


def test_examples_and_models_offered():
    examples = example_images()
    assert any(c.startswith("CIFAR-10: ") for _, c in examples)
    assert any(c.startswith("ImageNet: ") for _, c in examples)
    for path, _ in examples:
        assert Image.open(path).size[0] >= 32 and Path(path).stat().st_size < 100_000
    settings = default_settings()
    assert list(settings.models)[0] == defaults.EMBEDDED_MODEL and CLEAN_VIT in settings.models
    assert DENOISER in settings.denoisers and "dmae-vit-base-sigma0.25" in settings.unavailable


# ------------------------------------------------------------------------------------------------- CLI and Space
def test_serve_without_gradio_is_one_line_naming_the_extra():
    """The core package and dmae_hf.web import without gradio; `dmae serve` then says how to install it."""
    code = ("import sys; sys.modules['gradio'] = None\n"
            "import dmae_hf, dmae_hf.pipeline_dmae, dmae_hf.smoothing, dmae_hf.web\n"
            "from dmae_hf.cli import main\n"
            "sys.exit(main(['serve', '--port', '7999']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        'dmae serve: error: dmae serve needs gradio, which is not installed: pip install -e ".[demo]" '
        "(--debug shows the traceback)"]


def test_space_folder_is_a_gradio_space_naming_the_models(tmp_path):
    header = SpaceCard.load(SPACE_DIR / "README.md").data  # the YAML header, read as the Hub reads it
    assert header.sdk == "gradio" and header.app_file == "app.py"
    offered = [*default_settings().models, *default_settings().denoisers]
    assert header.models == [repo_id(name) for name in offered if name in SHORT_NAMES]
    import gradio

    assert header.sdk_version.split(".")[0] == gradio.__version__.split(".")[0]
    from importlib.metadata import requires

    core = {r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
            for r in requires("dmae-hf") if "extra ==" not in r}
    listed = {line.split(">")[0].split("<")[0].split("=")[0].strip().lower()
              for line in (SPACE_DIR / "requirements.txt").read_text().splitlines() if line and line[0] != "#"}
    assert core <= listed, core - listed
    staged = stage_space(tmp_path / "space")
    assert {p.name for p in staged.iterdir()} == {*SPACE_FILES, "dmae_hf"}
    assert (staged / "dmae_hf" / "checkpoints" / "dmae-tiny-cifar10" / "model.safetensors").is_file()
    assert not list(staged.rglob("__pycache__"))
    with pytest.raises(ValueError, match="not empty"):
        stage_space(staged)
    with pytest.raises(ValueError, match="lacks app.py, requirements.txt, README.md.*checkout"):
        stage_space(tmp_path / "other", space_dir=tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------------- browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url, process, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited with {process.returncode}: {process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the app did not answer at {url} within {timeout} s")


def require_browser():
    missing = [name for name, ok in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not ok]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        message = f"the browser test needs {', '.join(missing)}: bash .ci/install-browser"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


def test_browser_pushed_space_certifies_an_upload_and_rejects_a_non_image(tmp_path):
    require_browser()
    from hub_server_spaces import FakeSpacesHub
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_TOKEN="x", HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=str(REPO_ROOT))
    # 1. push the Space with the CLI, then lay out what the Hub received
    with FakeSpacesHub() as hub:
        result = subprocess.run([sys.executable, "-m", "dmae_hf.cli", "serve", "--push-space", "tester/dmae-certify"],
                                env={**env, "HF_ENDPOINT": hub.endpoint}, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Space pushed: " in result.stdout
        assert hub.created["tester/dmae-certify"]["type"] == "space"
        assert hub.created["tester/dmae-certify"]["sdk"] == "gradio"
        pushed = hub.repos["tester/dmae-certify"].files
    space = tmp_path / "space"
    for name, data in pushed.items():
        (space / name).parent.mkdir(parents=True, exist_ok=True)
        (space / name).write_bytes(data)
    assert (space / "app.py").read_text() == (SPACE_DIR / "app.py").read_text()

    # 2. run the pushed app.py alone (its own dmae_hf copy first on the path), offline, on a loopback port
    port = free_port()
    app_env = {**env, "PYTHONPATH": str(space), "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_NAME": "127.0.0.1",
               "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=app_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    upload = tmp_path / "dog.png"  # a CIFAR-10 test image under a name of the visitor's
    Image.open(ASSETS / "test_00015_dog.png").save(upload)
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    driver = None
    try:
        expected = certify_image(upload)  # the plain function, meanwhile: what the page must show
        denoised = certify_image(upload, model=CLEAN_VIT, denoiser=DENOISER)
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, server, timeout=60)
        options = webdriver.ChromeOptions()
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--window-size=1280,1350", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
            options.add_argument(argument)
        options.binary_location = CHROMIUM
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        file_input = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))
        page = driver.find_element(By.TAG_NAME, "body").text
        assert "This server allows at most 20,000 noisy samples (n0 + n) and 60 s of sampling per request" in page

        def answer(d):
            return d.find_element(By.ID, "answer").text

        def choose(box, value):
            driver.find_element(By.CSS_SELECTOR, f"#{box} input").click()
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'#{box} li[aria-label="{value}"]')).click()

        def sigma_shown(d):
            return d.find_element(By.CSS_SELECTOR, "#sigma input").get_attribute("value")

        def check_answer(text, expected):
            assert "Error" not in text, text
            if expected.abstained:
                assert "Abstain" in text
            else:
                assert f"Prediction: {expected.label}" in text
                assert f"Certified L2 radius: {expected.radius:.3f}" in text
                assert f"pA >= {expected.pA_lower:.4f}" in text
                assert "can change this prediction, with probability 1 - alpha = 99.9% over the sampling" in text
            assert defaults.CERTIFICATE_CAVEAT in text
            rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#histogram div.vote"))
            shown = {row.find_element(By.CLASS_NAME, "class-name").text:
                     int(row.find_element(By.CLASS_NAME, "count").text) for row in rows}
            assert shown == expected.counts

        # 3. upload the CIFAR-10 image and certify it with the embedded model
        start = time.perf_counter()
        file_input.send_keys(str(upload))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#preview img"))
        driver.find_element(By.ID, "certify").click()
        text = wait.until(lambda d: answer(d) if "noisy samples" in answer(d) or "Error" in answer(d) else None)
        seconds = time.perf_counter() - start
        print(f"upload to answer: {seconds:.1f} s (certification {expected.seconds:.1f} s in the test process)")
        check_answer(text, expected)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#noisy img")) >= 1
        assert driver.find_elements(By.CSS_SELECTOR, "#clean img") and driver.find_elements(By.CSS_SELECTOR,
                                                                                           "#perturbed img")
        screenshot = tmp_path / "web-demo.png"
        driver.save_screenshot(str(screenshot))
        if os.environ.get("DMAE_WEB_SCREENSHOT"):
            shutil.copy(screenshot, os.environ["DMAE_WEB_SCREENSHOT"])

        # 4. the clean ViT (no trained sigma: the field empties) behind the shipped denoiser (its sigma comes back)
        choose("model", CLEAN_VIT)
        wait.until(lambda d: sigma_shown(d) == "")
        choose("denoiser", DENOISER)
        wait.until(lambda d: sigma_shown(d) == "0.25")
        driver.find_element(By.ID, "certify").click()
        behind = f"{CLEAN_VIT} behind the denoiser {DENOISER}"
        text = wait.until(lambda d: answer(d) if behind in answer(d) or "Error" in answer(d) else None)
        check_answer(text, denoised)

        # 5. a file that is not an image: a message, no traceback
        driver.find_element(By.CSS_SELECTOR, "#upload button[aria-label=Clear]").click()
        file_input = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))
        file_input.send_keys(str(bad))
        message = "Cannot read the image 'notes.png'"
        text = wait.until(lambda d: answer(d) if message in answer(d) else None)
        driver.find_element(By.ID, "certify").click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#histogram div.vote"))
        page = driver.find_element(By.TAG_NAME, "body").text
        assert message in answer(driver) and "Traceback" not in page and "File \"" not in page
        assert str(tmp_path) not in page and "/tmp" not in page  # no place on the server is shown

        # 6. a bundled example instead of an upload, with the embedded model again
        choose("model", defaults.EMBEDDED_MODEL)
        choose("denoiser", "none")
        example = next(b for b in driver.find_elements(By.TAG_NAME, "button") if b.text == "CIFAR-10: automobile")
        example.click()
        wait.until(lambda d: "Error" not in answer(d) and d.find_elements(By.CSS_SELECTOR, "#preview img"))
        driver.find_element(By.ID, "certify").click()
        text = wait.until(lambda d: answer(d) if "noisy samples" in answer(d) or "Error" in answer(d) else None)
        assert "Prediction: automobile" in text and "behind the denoiser" not in text, text
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
