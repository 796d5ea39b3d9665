"""Keras models: builders, compile settings, TensorFlow set-up, the model size budget."""
