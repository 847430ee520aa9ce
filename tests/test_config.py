"""Config pieces: one flat spelling per option, identity without runtime options, checks of every
number, presets and overrides through from_flat."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from sparsenas.config import (ConfigPiece, flat_options, from_flat, identity, option,
                              replace_options, to_flat)
from sparsenas.strategies import STRATEGIES
from sparsenas.strategies.random_search import RandomSearchConfig
from sparsenas.train import TrainConfig


def test_flat_options_are_unique_and_documented():
    for name in STRATEGIES.names():
        options = flat_options(STRATEGIES.get(name).Config)
        assert len({o.name for o in options}) == len(options)
        assert all(o.help for o in options), [o.name for o in options if not o.help]


def test_strategy_defaults_of_pieces_are_used():
    epochs = next(o for o in flat_options(RandomSearchConfig) if o.name == "epochs")
    assert epochs.default == 20 and epochs.piece == "training" and TrainConfig().epochs == 30
    assert from_flat(RandomSearchConfig, {}).training.epochs == 20
    assert from_flat(RandomSearchConfig, {"lr": 0.1}).training.epochs == 20


def test_round_trip_and_identity():
    config = from_flat(RandomSearchConfig, {"widths": [8, 8], "device": "cpu", "threads": 2})
    assert config.parent.widths == (8, 8) and config.runtime.threads == 2
    flat = to_flat(config)
    assert from_flat(RandomSearchConfig, flat) == config
    ident = identity(config)
    assert "device" not in ident and "threads" not in ident and "data_root" not in ident
    assert ident["widths"] == [8, 8] and ident["epochs"] == 20
    assert replace_options(config, epochs=3).training.epochs == 3
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['frobnicate'\]"):
        from_flat(RandomSearchConfig, {"frobnicate": 1})


@pytest.mark.parametrize("values, match", [
    ({"lr": math.nan}, "lr must be a finite number"),
    ({"momentum": math.inf}, "momentum must be a finite number"),
    ({"seeds": (2**63,)}, "signed 64-bit"),
    ({"sparsities": (0.5, math.nan)}, "finite"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of sgd, adam"),
    ({"momentum": 1.5}, "momentum must be in"),
])
def test_numbers_and_choices_are_checked(values, match):
    with pytest.raises(ValueError, match=match):
        from_flat(RandomSearchConfig, values)


@dataclass(frozen=True)
class _Piece(ConfigPiece):
    epochs: int = option(1, "epochs")


@dataclass(frozen=True)
class _Clash(ConfigPiece):
    training: TrainConfig = TrainConfig()
    piece: _Piece = _Piece()


def test_duplicate_option_names_are_refused():
    with pytest.raises(TypeError, match=r"options defined twice: \['epochs'\]"):
        flat_options(_Clash)
