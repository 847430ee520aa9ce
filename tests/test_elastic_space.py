"""ElasticSpace: seeded sampling, local mutation, encode / decode, extremes and the uniform grid."""

from __future__ import annotations

import pytest

from sparsenas.models import ChildConfig, ElasticNet
from sparsenas.spaces.base import SearchSpace
from sparsenas.spaces.elastic import ElasticSpace


def _space() -> ElasticSpace:
    return ElasticSpace(resolutions=(6, 8), depths=((1, 2), (1, 2)), widths=((4, 6, 8),
                        (8, 12, 16)), kernels=(3, 5))


def test_sample_depends_on_seed_and_index_only():
    space = _space()
    assert isinstance(space, SearchSpace)
    children = space.sample(20, seed=7)
    assert space.sample(5, seed=7, first=10) == children[10:15]
    assert space.sample(20, seed=8) != children
    for child in children:
        space.check(child)
    # Every choice of every gene turns up in 200 draws.
    drawn = space.sample(200, seed=1)
    assert {c.resolution for c in drawn} == {6, 8}
    assert {c.widths[1] for c in drawn} == {8, 12, 16}
    assert {c.kernels[0] for c in drawn} == {3, 5}


def test_mutate_moves_to_adjacent_choices_deterministically():
    space = _space()
    parent = ChildConfig(8, (2, 1), (6, 12), (3, 5))
    child = space.mutate(parent, seed=3)
    assert child == space.mutate(parent, seed=3)
    assert child != parent
    space.check(child)
    for seed in range(30):
        child = space.mutate(parent, seed=seed)
        genes_parent, genes_child = space._to_genes(parent), space._to_genes(child)
        for choices, a, b in zip(space._genes(), genes_parent, genes_child):
            assert abs(choices.index(a) - choices.index(b)) <= 1


def test_encode_decode_round_trip_and_bad_text():
    space = _space()
    for child in space.sample(10, seed=0):
        text = space.encode(child)
        assert space.decode(text) == child
    assert space.encode(ChildConfig(6, (1, 2), (4, 16), (3, 5))) == "r6-d1.2-w4.16-k3.5"
    with pytest.raises(ValueError, match="width of stage 0"):
        space.decode("r6-d1.2-w5.16-k3.5")
    with pytest.raises(ValueError, match="resolution"):
        space.decode("r7-d1.2-w4.16-k3.5")
    with pytest.raises(ValueError, match="look like"):
        space.decode("not a child")
    with pytest.raises(ValueError, match="one entry per stage"):
        space.decode("r6-d1-w4.16-k3.5")


def test_biggest_smallest_and_uniform_grid():
    space = _space()
    assert space.biggest() == ChildConfig(8, (2, 2), (8, 16), (5, 5))
    assert space.smallest() == ChildConfig(6, (1, 1), (4, 8), (3, 3))
    grid = space.uniform_grid()
    assert len(grid) == 2 * 2 * 3 * 2 == len(set(grid))
    assert space.smallest() in grid and space.biggest() in grid
    assert ChildConfig(6, (2, 2), (6, 12), (3, 3)) in grid
    for child in grid:
        space.check(child)
        assert len(set(child.kernels)) == 1


def test_for_model_matches_the_model():
    model = ElasticNet((3, 32, 32), 10, stage_channels=(16, 32, 64), stage_depths=(2, 3, 3))
    space = ElasticSpace.for_model(model, resolutions=(24, 32), width_multipliers=(0.5, 1.0))
    assert space.biggest() == model.max_config()
    assert space.depths == ((1, 2), (2, 3), (2, 3))
    assert space.widths == ((8, 16), (16, 32), (32, 64))
    with pytest.raises(ValueError, match="too small for the stem"):
        ElasticSpace.for_model(model, resolutions=(2, 32))


def test_bad_space_arguments():
    with pytest.raises(ValueError, match="same number of choices"):
        ElasticSpace((8,), ((1, 2), (1,)), ((4,), (8,)), (3,))
    with pytest.raises(ValueError, match="odd"):
        ElasticSpace((8,), ((1,),), ((4,),), (4,))
    with pytest.raises(ValueError, match="positive"):
        ElasticSpace((0,), ((1,),), ((4,),), (3,))
