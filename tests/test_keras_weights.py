"""Tests of the Keras weights loader (harmonix.iguane.model.keras_weights).

The synthetic-file tests need h5py only. The parity test builds the IGUANe generator in
Keras and needs tf-keras (an optional test dependency); it is skipped without it.
"""

import sys

import numpy as np
import pytest
import torch
from keras_reference import build_keras_generator, random_keras_weights

from harmonix.iguane.model.keras_weights import load_keras_generator_weights
from harmonix.iguane.model.networks import Generator3D

h5py = pytest.importorskip("h5py")


# --------------------------------------------------------------------------- synthetic files


def _keras_blocks(w):
    """The Keras layout of the IGUANe generator, written from the architecture description.

    Returns ``(layer, [(weight name, shape), ...])`` in model order, as Keras 2 stores a
    functional model whose blocks are nested ``Sequential`` models.
    """
    blocks = [("input_1", [])]
    counters = {"conv3d": 0, "conv3d_transpose": 0, "instance_normalization": 0, "seq": 0}

    def name(kind):
        i = counters[kind]
        counters[kind] += 1
        return kind if i == 0 else f"{kind}_{i}"

    def block(kind, k, c_in, c_out):
        conv = name(kind)
        norm = name("instance_normalization")
        kernel = (k, k, k, c_out, c_in) if kind == "conv3d_transpose" else (k, k, k, c_in, c_out)
        blocks.append(
            (
                name("seq").replace("seq", "sequential"),
                [
                    (f"{conv}/kernel:0", kernel),
                    (f"{conv}/bias:0", (c_out,)),
                    (f"{norm}/scale:0", (c_out,)),
                    (f"{norm}/offset:0", (c_out,)),
                ],
            )
        )

    c_in = 1
    for c in (w, 2 * w, 4 * w, 8 * w):
        block("conv3d", 3, c_in, c)  # conv block
        block("conv3d", 4, c, c)  # down block
        c_in = c
    block("conv3d", 3, 8 * w, 16 * w)  # bottleneck
    c_in = 16 * w
    for i, c in enumerate((8 * w, 4 * w, 2 * w, w)):
        block("conv3d_transpose", 4, c_in, c)  # up block
        blocks.append((f"concatenate_{i}" if i else "concatenate", []))
        block("conv3d", 3, 2 * c, c)
        c_in = c
    blocks.append(("concatenate_4", []))
    last = name("conv3d")
    seq = name("seq").replace("seq", "sequential")
    blocks.append((seq, [(f"{last}/kernel:0", (1, 1, 1, w + 1, 1)), (f"{last}/bias:0", (1,))]))
    blocks.append(("add", []))
    return blocks


def _write_h5(path, blocks, rng, *, root_group=None, chunk_layer_names=False):
    """Write ``blocks`` as a Keras 2 legacy weights file; return the arrays by name."""
    arrays = {}
    with h5py.File(path, "w") as f:
        root = f.create_group(root_group) if root_group else f
        names = [layer.encode() for layer, _ in blocks]
        if chunk_layer_names:
            half = len(names) // 2
            root.attrs["layer_names0"] = names[:half]
            root.attrs["layer_names1"] = names[half:]
        else:
            root.attrs["layer_names"] = names
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.12.0"
        for layer, weights in blocks:
            g = root.create_group(layer)
            g.attrs["weight_names"] = [wn.encode() for wn, _ in weights]
            for wn, shape in weights:
                a = rng.standard_normal(shape).astype(np.float32)
                g.create_dataset(wn, data=a)
                arrays[f"{layer}/{wn}"] = a
    return arrays


def _kernel_to_torch(a):
    return torch.from_numpy(a).permute(4, 3, 0, 1, 2)


@pytest.mark.parametrize(
    "layout", [{}, {"root_group": "model_weights"}, {"chunk_layer_names": True}]
)
def test_synthetic_file_maps_every_weight(tmp_path, layout):
    w = 2
    blocks = _keras_blocks(w)
    arrays = _write_h5(tmp_path / "w.h5", blocks, np.random.default_rng(0), **layout)
    g = load_keras_generator_weights(tmp_path / "w.h5", Generator3D(base_width=w))

    # first conv block: Conv3D kernel (3, 3, 3, 1, w) -> Conv3d weight (w, 1, 3, 3, 3)
    k = arrays["sequential/conv3d/kernel:0"]
    assert k.shape == (3, 3, 3, 1, w)
    assert g.enc_convs[0].conv.weight.shape == (w, 1, 3, 3, 3)
    assert torch.equal(g.enc_convs[0].conv.weight, _kernel_to_torch(k))
    assert torch.equal(g.enc_convs[0].conv.weight[1, 0, 0, 1, 2], torch.tensor(k[0, 1, 2, 0, 1]))
    assert torch.equal(
        g.enc_convs[0].conv.bias, torch.from_numpy(arrays["sequential/conv3d/bias:0"])
    )
    norm = "sequential/instance_normalization"
    assert torch.equal(g.enc_convs[0].norm.weight, torch.from_numpy(arrays[f"{norm}/scale:0"]))
    assert torch.equal(g.enc_convs[0].norm.bias, torch.from_numpy(arrays[f"{norm}/offset:0"]))

    # first down block (strided conv)
    assert torch.equal(
        g.downs[0].conv.weight, _kernel_to_torch(arrays["sequential_1/conv3d_1/kernel:0"])
    )
    # bottleneck
    assert torch.equal(
        g.bottleneck.conv.weight, _kernel_to_torch(arrays["sequential_8/conv3d_8/kernel:0"])
    )

    # first up block: Conv3DTranspose kernel (4, 4, 4, out=8w, in=16w)
    #   -> ConvTranspose3d weight (in=16w, out=8w, 4, 4, 4), no flip
    kt = arrays["sequential_9/conv3d_transpose/kernel:0"]
    assert kt.shape == (4, 4, 4, 8 * w, 16 * w)
    assert g.ups[0].conv.weight.shape == (16 * w, 8 * w, 4, 4, 4)
    assert torch.equal(g.ups[0].conv.weight[3, 1, 0, 2, 3], torch.tensor(kt[0, 2, 3, 1, 3]))
    assert torch.equal(
        g.ups[0].norm.weight,
        torch.from_numpy(arrays["sequential_9/instance_normalization_9/scale:0"]),
    )
    # first decoder conv block sees the concatenation (2 * 8w channels)
    assert torch.equal(
        g.dec_convs[0].conv.weight, _kernel_to_torch(arrays["sequential_10/conv3d_9/kernel:0"])
    )
    # last 1x1x1 conv on [features (w), raw input (1)]
    last = arrays["sequential_17/conv3d_13/kernel:0"]
    assert torch.equal(g.out_conv.weight, _kernel_to_torch(last))
    assert torch.equal(g.out_conv.bias, torch.from_numpy(arrays["sequential_17/conv3d_13/bias:0"]))

    # every array was used once: the loaded parameters hold exactly the file's values
    loaded = sorted(p.detach().flatten().sum().item() for p in g.parameters())
    written = sorted(float(np.float32(a.sum())) for a in arrays.values())
    assert np.allclose(loaded, written, rtol=1e-5, atol=1e-4)


def test_default_generator_is_created(tmp_path):
    _write_h5(tmp_path / "w.h5", _keras_blocks(16), np.random.default_rng(1))
    g = load_keras_generator_weights(str(tmp_path / "w.h5"))
    assert isinstance(g, Generator3D)
    assert g.base_width == 16


def test_missing_weights_raise(tmp_path):
    blocks = _keras_blocks(2)
    del blocks[3]  # one conv block fewer
    _write_h5(tmp_path / "w.h5", blocks, np.random.default_rng(0))
    with pytest.raises(ValueError, match="expects 70"):
        load_keras_generator_weights(tmp_path / "w.h5", Generator3D(base_width=2))


def test_wrong_width_raises_with_expected_shape(tmp_path):
    _write_h5(tmp_path / "w.h5", _keras_blocks(2), np.random.default_rng(0))
    g = Generator3D(base_width=4)
    before = [p.detach().clone() for p in g.parameters()]
    with pytest.raises(ValueError, match=r"shape \(3, 3, 3, 1, 4\).*\(3, 3, 3, 1, 2\)"):
        load_keras_generator_weights(tmp_path / "w.h5", g)
    # nothing was written half
    assert all(torch.equal(a, b) for a, b in zip(before, g.parameters()))


def test_swapped_roles_raise(tmp_path):
    blocks = _keras_blocks(2)
    layer, weights = blocks[1]
    blocks[1] = (layer, [weights[0], weights[1], weights[3], weights[2]])
    _write_h5(tmp_path / "w.h5", blocks, np.random.default_rng(0))
    with pytest.raises(ValueError, match="should be a 'scale', found a 'offset'"):
        load_keras_generator_weights(tmp_path / "w.h5", Generator3D(base_width=2))


def test_file_without_layer_names_raises(tmp_path):
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match="layer_names"):
        load_keras_generator_weights(tmp_path / "w.h5", Generator3D(base_width=2))


def test_keras3_file_gets_a_hint(tmp_path):
    with h5py.File(tmp_path / "w.weights.h5", "w") as f:
        f.create_group("layers/conv3d/vars").create_dataset("0", data=np.zeros(3))
        f.create_group("vars")
    with pytest.raises(ValueError, match="Keras 3"):
        load_keras_generator_weights(tmp_path / "w.weights.h5", Generator3D(base_width=2))


def test_not_hdf5_raises_value_error(tmp_path):
    (tmp_path / "w.h5").write_text("not an HDF5 file")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        load_keras_generator_weights(tmp_path / "w.h5")


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_keras_generator_weights(tmp_path / "absent.h5")


def test_wrong_generator_type_raises(tmp_path):
    _write_h5(tmp_path / "w.h5", _keras_blocks(2), np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator3D"):
        load_keras_generator_weights(tmp_path / "w.h5", torch.nn.Linear(1, 1))


def test_missing_h5py_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        load_keras_generator_weights(tmp_path / "w.h5")


# --------------------------------------------------------------------------- Keras parity


PARITY_SEED = 0


def test_parity_with_keras(tmp_path):
    """Keras and harmonix give the same output from the same .h5 file.

    Both run in float64, which checks the weight mapping (~5e-12). In float32 the rounding
    is amplified by the mean-absolute-deviation norms, above all at the 2x2x2 bottleneck of
    a 32^3 volume whose statistics come from 8 voxels: float32 harmonix is ~1e-4 from the
    float64 result (up to ~1e-3 for some random weights), so the float32 check only bounds
    that rounding.
    """
    keras = pytest.importorskip("tf_keras")
    pytest.importorskip("tensorflow")
    floatx = keras.backend.floatx()
    keras.backend.set_floatx("float64")
    try:
        model = build_keras_generator()
        rng = np.random.default_rng(PARITY_SEED)
        # random values for every weight, biases and norm parameters included; float32
        # values, as in the official file
        new = random_keras_weights(model, rng)
        model.set_weights([a.astype(np.float64) for a in new])
        path = tmp_path / "iguane_weights.h5"
        model.save_weights(str(path))  # legacy HDF5 (Keras 2) because of the .h5 suffix
        x = rng.normal(0.0, 0.5, (1, 32, 32, 32, 1))
        expected = model(x, training=False).numpy()
    finally:
        keras.backend.set_floatx(floatx)
    with h5py.File(path, "r") as f:
        assert "layer_names" in f.attrs

    xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
    g64 = load_keras_generator_weights(path, Generator3D().double())
    g32 = load_keras_generator_weights(path)
    assert g32.enc_convs[0].conv.weight.dtype == torch.float32
    with torch.inference_mode():
        got64 = g64(xt).permute(0, 2, 3, 4, 1).numpy()
        got32 = g32(xt.float()).permute(0, 2, 3, 4, 1).numpy()
    diff64 = np.abs(got64 - expected).max()
    diff32 = np.abs(got32 - expected).max()
    print(f"max abs diff Keras (float64) vs harmonix: float64 {diff64:.3g}, float32 {diff32:.3g}")
    assert diff64 <= 1e-8
    assert diff32 <= 1e-3
