"""`dmae demo`: its picture shows every certified image with a title that does not overlap anything, and the run
prints the certificate caveat once."""

import itertools

import pytest
import torch

from dmae_hf import defaults
from dmae_hf.commands.demo import load_bundled_images, make_figure, panel_title, write_picture
from dmae_hf.smoothing import Certificate


def certificate(prediction, radius):
    return Certificate(prediction=prediction, radius=radius, pA_lower=0.9, counts=[0] * 10, n0=10, n=100,
                       alpha=0.001, sigma=0.25, seed=0, elapsed=0.0)


def test_picture_shows_all_20_images_with_titles_that_do_not_overlap(tmp_path):
    images, labels, names = load_bundled_images()
    assert len(images) == 20
    pixel_values = torch.rand(20, 3, 32, 32)
    # correct, wrong with the two longest names, and abstained: every kind of title
    certificates = [certificate(None if i % 7 == 3 else 1 - labels[i] % 2 if i % 5 == 2 else labels[i], 0.1 * i)
                    for i in range(20)]
    certificates[0] = certificate(1, 0.5)  # "automobile (true: airplane)", the widest title
    correct = torch.tensor([c.prediction == y for c, y in zip(certificates, labels, strict=True)]).numpy()
    radius = torch.tensor([c.radius for c in certificates]).numpy()
    fig = make_figure(pixel_values, labels, certificates, names, 0.25, correct, radius, seed=0)
    panels = [ax for ax in fig.axes if ax.get_label() == "certified"]
    assert len(panels) == 20 and all(len(ax.images) == 1 for ax in panels)
    for ax, cert, label in zip(panels, certificates, labels, strict=True):
        text, colour = panel_title(cert, label, names)
        assert ax.get_title() == text and len(text.splitlines()) == 2
        assert text.splitlines()[1] == ("no radius" if cert.abstained else f"r = {cert.radius:.2f}")
    assert panels[0].get_title().splitlines()[0] == "automobile (true: airplane)"
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes]
    for (i, a), (j, b) in itertools.combinations(enumerate(titles), 2):
        assert not a.overlaps(b), (fig.axes[i].get_title(), fig.axes[j].get_title())
    for i, title in enumerate(titles):
        assert not any(title.overlaps(box) for box in boxes), fig.axes[i].get_title()
        assert fig.bbox.contains(title.x0, title.y0) and fig.bbox.contains(title.x1, title.y1)
    out = tmp_path / "demo.png"
    write_picture(out, pixel_values, labels, certificates, names, 0.25, correct, radius, seed=0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(120)
def test_demo_prints_the_certificate_caveat_once(tmp_path, capsys):
    from dmae_hf.cli import main

    picture = tmp_path / "demo.png"
    assert main(["demo", "--n", "100", "--n0", "10", "--out", str(picture)]) == 0
    out = capsys.readouterr().out
    assert out.count(defaults.CERTIFICATE_CAVEAT) == 1
    assert picture.stat().st_size > 10_000
