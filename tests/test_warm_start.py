"""Warm starts: a .keras file loaded in safe mode becomes the session's round-0 model; unsafe or misfit files are
refused with their reason; frozen layers travel in the architecture."""

import keras
import numpy as np
import pytest

from common.data.dataspec import DataSpec
from common.ml.models import build_model, compile_model, compile_spec, model_from_architecture
from common.ml.warm_start import freeze_first_layers, load_initial_model
from fl_server.config import ServerConfig
from fl_server.data import ServerData
from fl_server.session import LiveRuntime

SHAPE, CLASSES = (6,), 3
# Keras' Variable.__array__ predates numpy 2's copy keyword; saving a model warns about it (third-party, harmless).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, *SHAPE)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 1).astype("int64")
    return ServerData(DataSpec.image(SHAPE, CLASSES), x, y, "test")  # the spec's kind does not matter here


def trained_file(tmp_path, data):
    model = build_model("mlp:8", SHAPE, CLASSES, seed=3)
    compile_model(model, compile_spec("adam", 0.05))
    model.fit(data.x_holdout, data.y_holdout, epochs=5, verbose=0)
    path = tmp_path / "pretrained.keras"
    model.save(path)
    return model, path


def test_round_zero_model_is_the_files_and_evaluates_to_its_accuracy(tmp_path, data):
    saved, path = trained_file(tmp_path, data)
    expected = saved.evaluate(data.x_holdout, data.y_holdout, verbose=0, return_dict=True)
    session = LiveRuntime().build_model(ServerConfig(initial_model=path, model="logreg"), data, None)
    for ours, theirs in zip(session.model.weights, saved.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    metrics = session.evaluate(0, session.model.weights)
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_frozen_layers_are_not_trainable_at_the_nodes_either(tmp_path, data):
    _, path = trained_file(tmp_path, data)
    session = LiveRuntime().build_model(ServerConfig(initial_model=path, freeze_layers=1), data, None)
    rebuilt = model_from_architecture(session.model.architecture)  # what a node builds
    assert [layer.trainable for layer in rebuilt.layers] == [False, True]
    with pytest.raises(ValueError, match="at least the last one"):
        freeze_first_layers(build_model("mlp:8", SHAPE, CLASSES), 2)


def test_a_file_with_code_in_it_is_refused_in_safe_mode(tmp_path):
    inputs = keras.Input(shape=SHAPE)
    outputs = keras.layers.Dense(CLASSES)(keras.layers.Lambda(lambda t: t * 2)(inputs))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="safe mode"):
        load_initial_model(path, input_shape=SHAPE, num_classes=CLASSES)


def test_a_misfit_or_foreign_file_is_refused_with_its_reason(tmp_path, data):
    _, path = trained_file(tmp_path, data)
    with pytest.raises(ValueError, match="inputs of shape"):
        load_initial_model(path, input_shape=(5,), num_classes=CLASSES)
    with pytest.raises(ValueError, match="3 outputs"):
        load_initial_model(path, input_shape=SHAPE, num_classes=4)
    legacy = tmp_path / "model.h5"
    legacy.write_bytes(b"not a keras 3 file")
    with pytest.raises(ValueError, match=r"must be a \.keras file"):
        load_initial_model(legacy, input_shape=SHAPE, num_classes=CLASSES)
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(ValueError, match="safe mode"):
        load_initial_model(junk, input_shape=SHAPE, num_classes=CLASSES)
