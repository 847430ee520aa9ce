import pytest
import torch

from sparsenas.sparse.selector import (CROSSOVERS_PATH, Crossovers, load_crossovers,
                                       mask_structure, select_execution, select_for_mask)

TABLE = Crossovers(unstructured=((1, 0.9), (16, 0.8), (256, 0.95)),
                   unstructured_min_weights=4096,
                   nm=((1, False), (16, True), (256, False)),
                   structured_min_node_sparsity=0.1)


@pytest.mark.parametrize("sparsity,structure,batch,shape,expected", [
    (0.5, "node", 16, (64, 64), "compacted"),
    (0.05, "node", 16, (64, 64), "dense_masked"),
    (0.85, "unstructured", 1, (64, 64), "dense_masked"),  # below batch 1's 0.9
    (0.92, "unstructured", 1, (64, 64), "sparse"),
    (0.85, "unstructured", 16, (64, 64), "sparse"),  # batch 16's 0.8
    (0.85, "unstructured", 100, (64, 64), "sparse"),  # largest calibrated batch <= 100 is 16
    (0.85, "unstructured", 512, (64, 64), "dense_masked"),  # batch 256's 0.95
    (0.99, "unstructured", 16, (32, 64), "dense_masked"),  # too small a layer
    (0.5, "nm", 1, (64, 64), "dense_masked"),
    (0.5, "nm", 32, (64, 64), "sparse"),
])
def test_select_execution_follows_crossovers(sparsity, structure, batch, shape, expected):
    assert select_execution(sparsity, structure, batch, shape[1], shape[0], TABLE) == expected


def test_select_for_mask_reads_structure_and_sparsity():
    node = torch.zeros(64, 64, dtype=torch.bool)
    node[:8] = True
    assert mask_structure(node) == "node"
    assert select_for_mask(node, 16, TABLE) == "compacted"
    generator = torch.Generator().manual_seed(0)
    unstructured = torch.rand(64, 64, generator=generator) > 0.93
    assert mask_structure(unstructured) == "unstructured"
    assert select_for_mask(unstructured, 1, TABLE) == "sparse"
    assert select_for_mask(torch.rand(64, 64, generator=generator) > 0.5, 1, TABLE) == "dense_masked"


def test_stored_crossovers_are_measured_data():
    table = load_crossovers()
    assert CROSSOVERS_PATH.exists()
    batches = [batch for batch, _ in table.unstructured]
    assert batches == sorted(batches) and batches[0] == 1
    assert all(0.0 <= s <= 1.0 for _, s in table.unstructured)
    assert 0.0 <= table.structured_min_node_sparsity <= 1.0
    # Whatever the machine, a compacted layer at 90% node sparsity must be chosen.
    assert select_execution(0.9, "node", 16, 1024, 1024) == "compacted"


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=1.0), "sparsity"), (dict(sparsity=-0.1), "sparsity"),
    (dict(batch=0), "batch"), (dict(in_features=0), "in_features"),
    (dict(structure="blocked"), "structure"),
])
def test_bad_arguments_raise(kwargs, match):
    arguments = dict(sparsity=0.5, structure="unstructured", batch=1, in_features=8,
                     out_features=8, crossovers=TABLE) | kwargs
    with pytest.raises(ValueError, match=match):
        select_execution(**arguments)
