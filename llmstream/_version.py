"""The package version, and the name it is installed under."""

__version__ = "0.1.0"

#: The distribution name on PyPI (``pip install llmstream-sdk``): ``llmstream``
#: there is an unrelated project. The import name and the command stay
#: ``llmstream``. setup.cfg's ``name`` must match (tests/test_optional_extras.py).
DISTRIBUTION = "llmstream-sdk"
