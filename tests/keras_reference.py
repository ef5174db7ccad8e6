"""The original IGUANe generator built in Keras 2 (tf-keras), to check and time the port.

Written from the architecture description, not from the original code: blocks are nested
``Sequential`` models (convolution, ReLU, instance norm by the mean absolute deviation),
so that ``save_weights`` to a ``.h5`` file gives the layout of the official
``iguane_weights.h5``. The parity test (``tests/test_keras_weights.py``) and the speed
benchmark against the TensorFlow original (``benchmarks/bench_iguane_inference.py``, which
puts ``tests/`` on its import path) both build it here.

Test and benchmark support, not part of the installed package. Needs ``tensorflow`` and
``tf-keras`` (``pip install "harmonix[keras]"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["build_keras_generator", "mad_norm_layer", "random_keras_weights"]


def _import_keras() -> tuple[Any, Any]:
    try:
        import tensorflow as tf
        import tf_keras as keras
    except ImportError as exc:
        raise ImportError(
            "The Keras reference of IGUANe needs TensorFlow and tf-keras: "
            'pip install "harmonix[keras]".'
        ) from exc
    return keras, tf


def mad_norm_layer() -> type:
    """The Keras layer of IGUANe's instance norm by the mean absolute deviation.

    Returns
    -------
    type
        A ``tf_keras.layers.Layer`` subclass with per-channel ``scale`` (ones) and
        ``offset`` (zeros) weights, eps 1e-3, statistics over the 3 spatial axes of
        ``NDHWC`` inputs.
    """
    keras, tf = _import_keras()

    class MADNorm(keras.layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(name="scale", shape=input_shape[-1:], initializer="ones")
            self.offset = self.add_weight(
                name="offset", shape=input_shape[-1:], initializer="zeros"
            )
            super().build(input_shape)

        def call(self, x):
            dev = x - tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            mad = tf.reduce_mean(tf.abs(dev), axis=[1, 2, 3], keepdims=True)
            return self.scale * dev / (mad + 1e-3) + self.offset

    return MADNorm


def build_keras_generator(base_width: int = 16) -> Any:
    """Build the IGUANe generator in Keras 2 (in the current Keras float type).

    Parameters
    ----------
    base_width : int, default=16
        Channels of the first level (16: the published network).

    Returns
    -------
    tf_keras.Model
        A model taking ``(N, D, H, W, 1)`` (``NDHWC``) volumes and returning the same shape.
    """
    keras, _ = _import_keras()
    layers = keras.layers
    MADNorm = mad_norm_layer()

    def block(layer):
        return keras.Sequential([layer, layers.ReLU(), MADNorm()])

    def conv(c, k):
        return block(layers.Conv3D(c, k, strides=1 if k == 3 else 2, padding="same"))

    def up(c):
        return block(layers.Conv3DTranspose(c, 4, strides=2, padding="same"))

    w = int(base_width)
    inputs = keras.Input(shape=(None, None, None, 1))
    skips = []
    x = inputs
    for c in (w, 2 * w, 4 * w, 8 * w):
        x = conv(c, 3)(x)
        skips.append(x)
        x = conv(c, 4)(x)
    x = conv(16 * w, 3)(x)
    for c in (8 * w, 4 * w, 2 * w, w):
        x = layers.Concatenate()([up(c)(x), skips.pop()])
        x = conv(c, 3)(x)
    x = layers.Concatenate()([x, inputs])
    x = keras.Sequential([layers.Conv3D(1, 1, padding="same"), layers.Activation("tanh")])(x)
    return keras.Model(inputs, layers.Add()([x, inputs]))


def random_keras_weights(model: Any, rng: np.random.Generator) -> list[np.ndarray]:
    """Random float32 values for every weight of ``model``, biases and norms included.

    Kernels are Glorot-uniform, norm scales uniform in [0.5, 1.5], biases and norm offsets
    normal with sd 0.1 (non-zero, so that a mix-up of any two weights shows).

    Parameters
    ----------
    model : tf_keras.Model
    rng : numpy.random.Generator

    Returns
    -------
    list of ndarray
        In the order of ``model.weights`` (for ``model.set_weights``).
    """
    values = []
    for v in model.weights:
        shape = tuple(v.shape)
        if "kernel" in v.name:
            receptive = int(np.prod(shape[:-2]))
            bound = np.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
            values.append(rng.uniform(-bound, bound, shape))
        elif "scale" in v.name:
            values.append(rng.uniform(0.5, 1.5, shape))
        else:
            values.append(rng.normal(0.0, 0.1, shape))
    return [a.astype(np.float32) for a in values]
