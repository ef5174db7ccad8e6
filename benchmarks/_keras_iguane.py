"""A Keras 2 (tf-keras) build of the IGUANe generator, for benchmarks.

Written from the architecture description (shared notes on IGUANe), like the parity test in
``tests/test_keras_weights.py``: blocks are nested ``Sequential`` models (convolution →
ReLU → instance norm by the mean absolute deviation), so that ``save_weights`` to a ``.h5``
file gives the layout of the official ``iguane_weights.h5``.

Needs ``tensorflow`` and ``tf-keras`` (``pip install tensorflow tf-keras``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_keras_generator"]


def build_keras_generator(keras: Any, tf: Any, base_width: int = 16) -> Any:
    """Build the IGUANe generator in Keras 2.

    Parameters
    ----------
    keras : module
        ``tf_keras``.
    tf : module
        ``tensorflow``.
    base_width : int, default=16
        Channels of the first level (16: the published network).

    Returns
    -------
    tf_keras.Model
        A model taking ``(N, D, H, W, 1)`` (``NDHWC``) volumes and returning the same shape.
    """
    layers = keras.layers

    class MADNorm(layers.Layer):
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
