"""avgen: visually indicated sound generation with a plugin system."""

__version__ = "0.1.0"

from avgen.errors import AvgenError, UnknownComponentError  # noqa: E402
from avgen.registry import KINDS, Component  # noqa: E402
from avgen.plugins import create, get_component, list_components  # noqa: E402
from avgen.hookspecs import hookimpl  # noqa: E402

__all__ = [
    "KINDS",
    "AvgenError",
    "Component",
    "UnknownComponentError",
    "__version__",
    "create",
    "get_component",
    "hookimpl",
    "list_components",
]
