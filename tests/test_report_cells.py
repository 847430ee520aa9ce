"""Cell diagrams: a non-empty PNG with both cells, written atomically."""

from __future__ import annotations

import matplotlib.pyplot as plt

from sparsenas.report.cells import draw_cell, plot_genotype
from sparsenas.spaces.cells import DARTS_V2, CellSpace


def test_plot_genotype_writes_a_png(tmp_path):
    path = plot_genotype(DARTS_V2, tmp_path / "plots" / "cells.png", title="DARTS-V2")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert [p.name for p in path.parent.iterdir()] == ["cells.png"]  # no temporary file left
    image = plt.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # something is drawn


def test_draw_cell_labels_every_edge():
    genotype = CellSpace(steps=3).sample(1, seed=2)[0]
    figure, axes = plt.subplots()
    draw_cell(axes, genotype.normal, genotype.normal_concat, "normal")
    texts = [t.get_text() for t in axes.texts]
    plt.close(figure)
    for op, _ in genotype.normal:
        assert op in texts
    assert texts.count(genotype.normal[0][0]) == sum(op == genotype.normal[0][0]
                                                     for op, _ in genotype.normal)
    assert {"0", "1", "2", "$c_{k-2}$", "$c_{k-1}$", "$c_{k}$"} <= set(texts)
