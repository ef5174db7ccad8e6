"""One IGUANe training site-step of the original design in TensorFlow (tf-keras), for timing.

Written from the facts in ``shared/IGUANE.md`` (not from the original code) so that
harmonix's training speed can be compared with a TensorFlow implementation on the same
machine (``benchmarks/bench_iguane_training_speed.py``). A *site-step* is one source site's share
of a training step:

1. one update of the site's two discriminators: the generator to the source site makes 2
   fake source volumes from 2 reference volumes, the generator to the reference makes 2
   fake reference volumes from 2 (other) source volumes (no gradients); each discriminator
   sees its 2 real and 2 generated volumes (batches of 2), LSGAN losses (no 0.5 factor),
   one Adam step over both discriminators' weights;
2. one joint update of the generator to the reference and the site's generator to the
   source on a fresh (source, reference) pair (batch 1): LSGAN adversarial terms, both
   cycles (L1, weight 30), both identities (L1, weight 15), one Adam step over both
   generators.

Adam: lr 2e-4, beta1 0.9, beta2 0.999, eps 1e-7. Generator outputs are multiplied by their
input's brain mask (background 0), as in the original. Float32, each update one
``tf.function`` (graph mode, TensorFlow's default threads). The generator is
``tests/keras_reference.py``'s Keras build; the PatchGAN discriminator is built here.

Needs TensorFlow and tf-keras, which live in the separate benchmark environment
(``.venv-bench``), never in harmonix's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from _helpers.common import use_test_helpers

use_test_helpers()  # keras_reference

__all__ = ["TFSiteStep", "build_keras_discriminator"]

CYCLE_WEIGHT = 30.0
IDENTITY_WEIGHT = 15.0


def build_keras_discriminator(base_width: int = 64) -> Any:
    """IGUANe's PatchGAN discriminator in Keras 2 (``NDHWC``, one channel in, one out).

    Pad every side by 1 with -1, Conv3D ``w`` k4 s2 valid without bias, LeakyReLU 0.2, then
    twice Conv3D (``2w``, ``4w``) k4 s2 padding 1 without bias, MAD instance norm, LeakyReLU
    0.2, and a Conv3D 1 k3 s1 padding 1 with bias (linear).
    """
    import tensorflow as tf
    import tf_keras as keras
    from keras_reference import mad_norm_layer

    layers = keras.layers

    MADNorm = mad_norm_layer()  # the Keras MAD norm of the parity tests

    w = int(base_width)
    inputs = keras.Input(shape=(None, None, None, 1))
    x = layers.Lambda(
        lambda t: tf.pad(t, [[0, 0], [1, 1], [1, 1], [1, 1], [0, 0]], constant_values=-1.0)
    )(inputs)
    x = layers.Conv3D(w, 4, strides=2, padding="valid", use_bias=False)(x)
    x = layers.LeakyReLU(0.2)(x)
    for c in (2 * w, 4 * w):
        x = layers.Conv3D(c, 4, strides=2, padding="same", use_bias=False)(x)
        x = MADNorm()(x)
        x = layers.LeakyReLU(0.2)(x)
    x = layers.Conv3D(1, 3, padding="same")(x)
    return keras.Model(inputs, x)


class TFSiteStep:
    """The networks, optimizers and compiled updates of one source site.

    Parameters
    ----------
    base_width : int
        Generator width (16: the published network).
    disc_base_width : int
        Discriminator width (64: the published network).
    shape : tuple of 3 int
        Volume size (multiples of 16).
    seed : int
        Seeds the weights and the synthetic volumes.
    """

    def __init__(self, base_width: int, disc_base_width: int, shape: tuple, seed: int = 0):
        import tensorflow as tf
        import tf_keras as keras
        from keras_reference import build_keras_generator

        tf.random.set_seed(seed)
        self.tf = tf
        self.g_ref = build_keras_generator(base_width)  # any source -> reference
        self.g_src = build_keras_generator(base_width)  # reference -> this source
        self.d_ref = build_keras_discriminator(disc_base_width)
        self.d_src = build_keras_discriminator(disc_base_width)

        def adam():
            return keras.optimizers.Adam(2e-4, beta_1=0.9, beta_2=0.999, epsilon=1e-7)

        self.opt_d, self.opt_g = adam(), adam()
        self.g_vars = self.g_ref.trainable_variables + self.g_src.trainable_variables
        self.d_vars = self.d_ref.trainable_variables + self.d_src.trainable_variables
        self.data = synthetic_batches(shape, seed)
        self._disc = tf.function(self._disc_update)
        self._gen = tf.function(self._gen_update)

    # -- losses --------------------------------------------------------------------------
    def _mse(self, scores, target):
        return self.tf.reduce_mean(self.tf.square(scores - target))

    def _l1(self, a, b):
        return self.tf.reduce_mean(self.tf.abs(a - b))

    # -- updates -------------------------------------------------------------------------
    def _disc_update(self, src, ms, ref, mr, src2, ms2, ref2, mr2):
        tf = self.tf
        fake_src = tf.stop_gradient(self.g_src(ref, training=True) * mr)
        fake_ref = tf.stop_gradient(self.g_ref(src2, training=True) * ms2)
        with tf.GradientTape() as tape:
            loss = (
                self._mse(self.d_src(src, training=True), 1.0)
                + self._mse(self.d_src(fake_src, training=True), 0.0)
                + self._mse(self.d_ref(ref2, training=True), 1.0)
                + self._mse(self.d_ref(fake_ref, training=True), 0.0)
            )
        grads = tape.gradient(loss, self.d_vars)
        self.opt_d.apply_gradients(zip(grads, self.d_vars))
        return loss

    def _gen_update(self, src, ms, ref, mr):
        tf = self.tf
        with tf.GradientTape() as tape:
            fake_ref = self.g_ref(src, training=True) * ms
            fake_src = self.g_src(ref, training=True) * mr
            adv = self._mse(self.d_ref(fake_ref, training=False), 1.0) + self._mse(
                self.d_src(fake_src, training=False), 1.0
            )
            cyc = self._l1(self.g_src(fake_ref, training=True) * ms, src) + self._l1(
                self.g_ref(fake_src, training=True) * mr, ref
            )
            ident = self._l1(self.g_ref(ref, training=True) * mr, ref) + self._l1(
                self.g_src(src, training=True) * ms, src
            )
            loss = adv + CYCLE_WEIGHT * cyc + IDENTITY_WEIGHT * ident
        grads = tape.gradient(loss, self.g_vars)
        self.opt_g.apply_gradients(zip(grads, self.g_vars))
        return loss

    def __call__(self) -> float:
        """One site-step; returns the generator loss (forces the computation)."""
        d = self.data
        d_loss = self._disc(*d["disc"])
        g_loss = self._gen(*d["gen"])
        return float(d_loss.numpy() + g_loss.numpy())


def synthetic_volume(shape: tuple, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth ellipsoidal "brain" on the network scale (background 0 as fed to the
    networks) and its mask; the same generator serves the harmonix and TensorFlow runs."""
    grid = np.indices(shape, dtype=np.float32)
    r = sum(((g - s / 2 + 0.5) / (0.42 * s)) ** 2 for g, s in zip(grid, shape))
    mask = r < 1
    x = np.zeros(shape, np.float32)
    x[mask] = (0.3 * rng.standard_normal(mask.sum()) + 0.4 * np.cos(3 * r[mask])).astype(
        np.float32
    )
    return x, mask


def synthetic_batches(shape: tuple, seed: int) -> dict:
    """Network inputs of one site-step: 4+4 volumes for the discriminators, 1+1 for the
    generators, as NDHWC float32 tensors with their masks."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    def batch(n):
        vols = [synthetic_volume(shape, rng) for _ in range(n)]
        x = np.stack([v for v, _ in vols])[..., None]
        m = np.stack([m for _, m in vols])[..., None].astype(np.float32)
        return tf.constant(x), tf.constant(m)

    disc = [*batch(2), *batch(2), *batch(2), *batch(2)]
    gen = [*batch(1), *batch(1)]
    return {"disc": disc, "gen": gen}
