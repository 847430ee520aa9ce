"""Genotypes: derivation from α (against DARTS' own loop), the skip limit, the string round trip,
malformed strings, parametric-op counts and the cell search space."""

from __future__ import annotations

import pytest
import torch

from sparsenas.models.darts import PRIMITIVES, num_edges
from sparsenas.spaces import SPACES
from sparsenas.spaces.base import SearchSpace
from sparsenas.spaces.cells import (
    DARTS_V2,
    CellSpace,
    Genotype,
    decode_genotype,
    derive_genotype,
    encode_genotype,
    param_ops,
)


def _darts_parse(weights, steps):
    """DARTS' genotype() loop (model_search.py), on a list-of-lists of softmax weights."""
    gene, n, start = [], 2, 0
    none = PRIMITIVES.index("none")
    for i in range(steps):
        end = start + n
        rows = weights[start:end]
        edges = sorted(range(i + 2), key=lambda x: -max(rows[x][k] for k in range(len(rows[x]))
                                                         if k != none))[:2]
        for j in edges:
            k_best = None
            for k in range(len(rows[j])):
                if k != none and (k_best is None or rows[j][k] > rows[j][k_best]):
                    k_best = k
            gene.append((PRIMITIVES[k_best], j))
        start, n = end, n + 1
    return tuple(gene)


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("seed", range(5))
def test_derivation_matches_darts(steps, seed):
    generator = torch.Generator().manual_seed(seed)
    normal = torch.randn(num_edges(steps), 8, generator=generator)
    reduce = torch.randn(num_edges(steps), 8, generator=generator)
    genotype = derive_genotype(normal, reduce)
    assert genotype.normal == _darts_parse(torch.softmax(normal.double(), -1).tolist(), steps)
    assert genotype.reduce == _darts_parse(torch.softmax(reduce.double(), -1).tolist(), steps)
    assert genotype.normal_concat == tuple(range(2, steps + 2))


def test_none_never_chosen_and_multiplier():
    normal = torch.zeros(14, 8)
    normal[:, 0] = 10.0  # none dominates every edge
    normal[:, 5] = 1.0
    genotype = derive_genotype(normal, normal, multiplier=2)
    assert all(op == "sep_conv_5x5" for op, _ in genotype.normal)
    assert [j for _, j in genotype.normal[:4]] == [0, 1, 0, 1]  # equal edges: input order
    assert genotype.normal_concat == (4, 5)


def test_skip_limit_replaces_the_weakest_skips_by_their_next_best_op():
    normal = torch.full((14, 8), -5.0)
    skip = PRIMITIVES.index("skip_connect")
    edge_rows = {0: 0, 1: 1, 2: 2, 3: 3, 4: 5, 5: 6, 6: 9, 7: 10}  # inputs 0 and 1 of each node
    strengths = [3.0, 2.0, 2.5, 1.0, 4.0, 1.5, 0.5, 3.5]
    for position, row in edge_rows.items():
        normal[row, skip] = strengths[position]
        normal[row, PRIMITIVES.index("dil_conv_3x3")] = 0.0
    unlimited = derive_genotype(normal, normal)
    assert [op for op, _ in unlimited.normal] == ["skip_connect"] * 8
    limited = derive_genotype(normal, normal, max_skip=2)
    kept = [position for position, (op, _) in enumerate(limited.normal) if op == "skip_connect"]
    # the two strongest skips stay: node 2's input 0 (4.0) and node 3's input 1 (3.5), which
    # derivation lists first in its node
    assert [limited.normal[i] for i in kept] == [("skip_connect", 0), ("skip_connect", 1)]
    assert kept == [4, 6]
    assert all(op == "dil_conv_3x3" for i, (op, _) in enumerate(limited.normal) if i not in kept)
    assert [j for _, j in limited.normal] == [j for _, j in unlimited.normal]
    assert limited.reduce == unlimited.reduce  # the limit is for the normal cell
    assert derive_genotype(normal, normal, max_skip=0).normal[4][0] == "dil_conv_3x3"


def test_round_trip_and_param_ops():
    text = encode_genotype(DARTS_V2)
    assert text.startswith("normal=sep_conv_3x3@0,sep_conv_3x3@1,") and text.endswith("|2,3,4,5")
    assert decode_genotype(text) == DARTS_V2
    assert decode_genotype(f"  {text} ") == DARTS_V2
    assert param_ops(DARTS_V2) == 6
    for genotype in CellSpace(steps=3, multiplier=2).sample(20, seed=4):
        assert decode_genotype(encode_genotype(genotype)) == genotype
    reduce_skip = Genotype((("skip_connect", 0), ("sep_conv_3x3", 1)), (2,),
                           (("skip_connect", 0), ("max_pool_3x3", 1)), (2,))
    assert param_ops(reduce_skip) == 2  # normal sep conv + the reduction's FactorizedReduce


@pytest.mark.parametrize("text, problem", [
    ("", "two cells"),
    ("normal=sep_conv_3x3@0,sep_conv_3x3@1|2", "two cells"),
    ("normal=sep_conv_3x3@0,sep_conv_3x3@1|2;cell=max_pool_3x3@0,max_pool_3x3@1|2",
     "must read 'normal="),
    ("normal=sep_conv_3x3@0,sep_conv_3x3@1|2;normal=max_pool_3x3@0,max_pool_3x3@1|2", "twice"),
    ("normal=sep_conv_3x3:0,sep_conv_3x3@1|2;reduce=max_pool_3x3@0,max_pool_3x3@1|2", "'op@input'"),
    ("normal=sep_conv_3x3@0,sep_conv_3x3@1|2,x;reduce=max_pool_3x3@0,max_pool_3x3@1|2",
     "comma-separated"),
    ("normal=conv_9x9@0,sep_conv_3x3@1|2;reduce=max_pool_3x3@0,max_pool_3x3@1|2",
     "unknown operation 'conv_9x9'"),
    ("normal=none@0,sep_conv_3x3@1|2;reduce=max_pool_3x3@0,max_pool_3x3@1|2",
     "unknown operation 'none'"),
    ("normal=sep_conv_3x3@0,sep_conv_3x3@2|2;reduce=max_pool_3x3@0,max_pool_3x3@1|2",
     "node 0: input 2"),
    ("normal=sep_conv_3x3@0|2;reduce=max_pool_3x3@0|2", "two edges per node"),
    ("normal=sep_conv_3x3@0,sep_conv_3x3@1|3;reduce=max_pool_3x3@0,max_pool_3x3@1|2", "concat"),
    ("normal=sep_conv_3x3@0,sep_conv_3x3@1,sep_conv_3x3@0,sep_conv_3x3@1|2;"
     "reduce=max_pool_3x3@0,max_pool_3x3@1|2", "as many edges"),
])
def test_malformed_strings_name_the_problem(text, problem):
    with pytest.raises(ValueError, match="genotype") as error:
        decode_genotype(text)
    assert problem in str(error.value)


def test_bad_alphas():
    with pytest.raises(ValueError, match="'alphas_normal'"):
        derive_genotype(torch.zeros(14, 7), torch.zeros(14, 8))
    with pytest.raises(ValueError, match="num_edges"):
        derive_genotype(torch.zeros(13, 8), torch.zeros(13, 8))
    with pytest.raises(ValueError, match="'max_skip'"):
        derive_genotype(torch.zeros(14, 8), torch.zeros(14, 8), max_skip=-1)


def test_cell_space_sampling_is_keyed_by_seed_and_index():
    space = SPACES.get("cells")(steps=4)
    assert isinstance(space, SearchSpace)
    batch = space.sample(6, seed=3)
    assert space.sample(2, seed=3, first=4) == batch[4:]
    assert space.sample(6, seed=4) != batch
    assert len({encode_genotype(g) for g in batch}) == 6
    for genotype in batch:
        for cell in (genotype.normal, genotype.reduce):
            for node in range(4):
                assert cell[2 * node][1] != cell[2 * node + 1][1]
        assert space.decode(space.encode(genotype)) == genotype
        assert space.describe(genotype)["param_ops"] == param_ops(genotype)


def test_cell_space_mutation_changes_one_edge():
    space = CellSpace(steps=4)
    parent = space.sample(1, seed=0)[0]
    children = [space.mutate(parent, seed) for seed in range(40)]
    assert space.mutate(parent, 7) == children[7]
    kinds = set()
    for child in children:
        changed = [(a, b) for a, b in zip(parent.normal + parent.reduce,
                                          child.normal + child.reduce) if a != b]
        assert len(changed) == 1
        (old_op, old_in), (new_op, new_in) = changed[0]
        kinds.add("op" if old_op != new_op else "input")
        assert (old_op == new_op) != (old_in == new_in)
        for cell in (child.normal, child.reduce):
            assert all(cell[2 * n][1] != cell[2 * n + 1][1] for n in range(4))
    assert kinds == {"op", "input"}
    with pytest.raises(ValueError, match="4 nodes"):
        space.mutate(CellSpace(steps=2).sample(1, seed=0)[0], 0)
    with pytest.raises(ValueError, match="'steps'"):
        CellSpace(steps=0)


def test_cell_space_crossover_takes_whole_nodes_from_the_parents():
    space = CellSpace(steps=4)
    a, b = space.sample(2, seed=1)
    children = [space.crossover(a, b, seed) for seed in range(20)]
    assert space.crossover(a, b, 3) == children[3]
    sources = set()
    for child in children:
        for cell in ("normal", "reduce"):
            for node in range(4):
                pair = getattr(child, cell)[2 * node:2 * node + 2]
                from_a = pair == getattr(a, cell)[2 * node:2 * node + 2]
                from_b = pair == getattr(b, cell)[2 * node:2 * node + 2]
                assert from_a or from_b
                sources.add("a" if from_a else "b")
    assert sources == {"a", "b"}
