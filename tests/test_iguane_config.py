"""IGUANe training settings (harmonix.iguane.config): validation and where they live."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from harmonix.iguane import config as C
from harmonix.iguane import losses as L


def test_train_config_validates():
    assert C.TrainConfig(patch_size=32).patch_size == (32, 32, 32)
    assert C.TrainConfig(voxel_size=[2, 2, 3]).voxel_size == (2.0, 2.0, 3.0)
    assert C.TrainConfig().discriminator_width == 64
    assert C.TrainConfig().n_steps == 100 * 200
    with pytest.raises(ValueError, match="multiple of 16"):
        C.TrainConfig(patch_size=20)
    with pytest.raises(ValueError, match="n_epochs"):
        C.TrainConfig(n_epochs=0)
    with pytest.raises(ValueError, match="val_fraction"):
        C.TrainConfig(val_fraction=1.5)
    with pytest.raises(ValueError, match="amp_dtype"):
        C.TrainConfig(amp_dtype="int8")
    with pytest.raises(ValueError, match="lr_schedule"):
        C.TrainConfig(lr_schedule="cosine")
    with pytest.raises(dataclasses.FrozenInstanceError):
        C.TrainConfig().n_epochs = 3


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("learning_rate", 0.0, "learning_rate must be a positive number"),
        ("adam_eps", float("nan"), "adam_eps must be a positive number"),
        ("final_learning_rate", -1e-5, "final_learning_rate must be a non-negative number"),
        ("final_learning_rate", float("inf"), "final_learning_rate must be a non-negative"),
        ("cycle_weight", -1.0, "cycle_weight must be a non-negative number"),
        ("shift_mm", "5", "shift_mm must be a non-negative number"),
        ("warmup_steps", True, "warmup_steps must be an integer >= 0"),
        ("beta1", 1.0, r"beta1 must be in \[0, 1\)"),
    ],
)
def test_train_config_refuses_bad_numbers(name, value, message):
    with pytest.raises(ValueError, match=message):
        C.TrainConfig(**{name: value})


def test_zero_is_accepted_where_non_negative():
    config = C.TrainConfig(final_learning_rate=0.0, cycle_weight=0, shift_mm=0, warmup_steps=0)
    assert config.max_shift_voxels == (0, 0, 0)


def test_default_loss_weights_are_the_losses_module_ones():
    config = C.TrainConfig()
    assert (config.cycle_weight, config.identity_weight) == (L.CYCLE_WEIGHT, L.IDENTITY_WEIGHT)
    assert (L.CYCLE_WEIGHT, L.IDENTITY_WEIGHT) == (30.0, 15.0)  # the published weights


def test_old_import_paths_still_work():
    from harmonix.iguane import CPU_RECIPE
    from harmonix.iguane.recipes import CPU_RECIPE as from_recipes
    from harmonix.iguane.training import TrainConfig

    assert TrainConfig is C.TrainConfig
    assert CPU_RECIPE is from_recipes is C.CPU_RECIPE
    C.TrainConfig(**{k: v for k, v in CPU_RECIPE.items() if k != "input_normalization"})


def _iguane_imports() -> dict[str, set[str]]:
    """Modules of harmonix.iguane that each of its modules imports (TYPE_CHECKING too)."""
    package = Path(C.__file__).parent
    graph = {}
    for path in package.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            found |= {n.split(".")[2] for n in names if n.startswith("harmonix.iguane.")}
        graph[path.stem] = found & {p.stem for p in package.glob("*.py")}
    return graph


def test_no_import_cycle_in_iguane():
    graph = _iguane_imports()
    assert "config" in graph["checkpoints"] and "training" not in graph["checkpoints"]
    done: set[str] = set()

    def visit(module: str, stack: tuple[str, ...]) -> None:
        assert module not in stack, f"import cycle: {' -> '.join((*stack, module))}"
        if module not in done:
            for dep in graph[module] - {module}:
                visit(dep, (*stack, module))
            done.add(module)

    for module in graph:
        visit(module, ())


def test_size_triple_accepts_multiples_of_the_generator_size():
    assert C.size_triple((32, 48, 16)) == (32, 48, 16)
    assert C.size_triple([np.int64(160), 192, 160]) == (160, 192, 160)
    assert C.size_triple(32, allow_int=True) == (32, 32, 32)
    for bad in (32, (32, 32), (32, 32, 20), (0, 16, 16), (16, 16, None)):
        assert C.size_triple(bad) is None, bad
    assert C.size_triple(True, allow_int=True) is None
