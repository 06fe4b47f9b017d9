"""Reference model zoo used by tests, benchmarks and the demo (not shipped in the wheel).

`models.zoo` holds the registry (`MODELS`, `get`, `build`, `names`) and one builder per model;
`models.text` draws real English sentences for calibration and evaluation.
"""

from models.zoo import MODELS, ModelSpec, build, get, names

__all__ = ["MODELS", "ModelSpec", "build", "get", "names"]
