"""PyTorch -> Flax conversion: official RSA checkpoints and torchvision ResNets.

* `torch_io` — reading `.pth(.tar)` / `.npz` files safely (`read_state_dict`);
* `rsa_layer` — one official RSA layer's parameters <-> the Flax `RSA` module's;
* `infer` — official keys: normalisation and config inference (RSA-layer majority);
* `keys` — Flax variable paths <-> official state-dict keys; the strict key check;
* `official` — whole official checkpoints: strict loading, orbax output;
* `torchvision` — ImageNet ResNet inflation and merging into fresh variables;
* `__main__` — the ``python -m rsa_jax.convert`` command line.

See docs/converting.md.
"""

from rsa_jax.convert.keys import variables_to_state_dict
from rsa_jax.convert.official import (
    LEGACY_RSA_NAMES,
    infer_model_config,
    load_official_checkpoint,
    normalize_official_keys,
    official_to_orbax,
    state_dict_to_variables,
)
from rsa_jax.convert.rsa_layer import (
    conv3d_weight_from_torch,
    conv3d_weight_to_torch,
    rsa_layer_params_from_torch,
    rsa_layer_params_to_torch,
)
from rsa_jax.convert.torch_io import CheckpointError, read_state_dict
from rsa_jax.convert.torchvision import (
    backbone_to_torchvision,
    merge_pretrained,
    torchvision_to_backbone,
)

__all__ = [
    "CheckpointError", "LEGACY_RSA_NAMES", "backbone_to_torchvision",
    "conv3d_weight_from_torch", "conv3d_weight_to_torch", "infer_model_config",
    "load_official_checkpoint", "main", "merge_pretrained", "normalize_official_keys",
    "official_to_orbax", "read_state_dict", "rsa_layer_params_from_torch",
    "rsa_layer_params_to_torch", "state_dict_to_variables", "torchvision_to_backbone",
    "variables_to_state_dict",
]


def main(argv: list[str] | None = None) -> int:
    """The ``python -m rsa_jax.convert`` command line (`rsa_jax/convert/__main__.py`).

    Imported on call, so that ``python -m`` does not find ``__main__`` already
    imported by the package.
    """
    from rsa_jax.convert.__main__ import main as cli_main
    return cli_main(argv)
