import json

import pytest

from common.ml.models import build_model, model_from_architecture, parse_model_name


@pytest.mark.parametrize(
    ("name", "input_shape", "dense_units"),
    [("logreg", (5,), [3]), ("mlp", (5,), [64, 3]), ("mlp:16,8", (5,), [16, 8, 3]), ("cnn", (8, 8, 1), [128, 3])],
)
def test_catalogue_models_build_and_survive_the_safe_mode_round_trip(name, input_shape, dense_units):
    model = build_model(name, input_shape, 3)
    assert [layer.units for layer in model.layers if hasattr(layer, "units")] == dense_units
    rebuilt = model_from_architecture(model.to_json())
    assert [w.shape for w in rebuilt.get_weights()] == [w.shape for w in model.get_weights()]


def test_user_builder_from_a_file(tmp_path):
    builder = tmp_path / "my_model.py"
    builder.write_text(
        "import keras\n\n"
        "def make(input_shape, num_classes):\n"
        "    return keras.Sequential([keras.Input(shape=input_shape), keras.layers.Dense(7, activation='relu'),\n"
        "                             keras.layers.Dense(num_classes, activation='softmax')])\n"
    )
    model = build_model(f"{builder}:make", (4,), 2)
    assert model.output_shape == (None, 2)
    with pytest.raises(ValueError, match="no function"):
        build_model(f"{builder}:missing", (4,), 2)


def test_cnn_needs_images_and_bad_names_are_refused():
    with pytest.raises(ValueError, match="image"):
        build_model("cnn", (64,), 10)
    for bad in ("mlp:a", "mlp:0", "resnet", "logreg:3"):
        with pytest.raises(ValueError):
            parse_model_name(bad)


def test_safe_mode_refuses_lambda_layers():
    import keras

    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Lambda(lambda x: x * 2)])
    config = json.loads(model.to_json())
    with pytest.raises(ValueError):
        model_from_architecture(json.dumps(config))
