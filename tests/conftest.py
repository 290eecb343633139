"""Session-wide test set-up: 8 simulated CPU devices for the multi-device tests.

XLA reads the flag when jax initialises its backends, so it must be set before
any test module imports jax. Single-device tests are unaffected (they use
``jax.devices()[0]`` or a 1-device mesh).
"""

import os

# The suite runs on the CPU. With libtpu installed (requirements-dev.txt, for the TPU
# compile tests of tests/test_aot.py) a jax process would otherwise probe for TPU
# hardware at start-up and print libtpu's warnings; child processes inherit this.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (seconds to minutes); run in CI too")
