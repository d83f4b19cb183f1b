"""Which pip extra provides a missing package, read from vtsel's own metadata (pyproject.toml is
the one list), so a command run on the bare library says what to install instead of failing
with a traceback deep in an import."""

from __future__ import annotations

import re
from importlib import metadata

IMPORT_NAMES = {
    "PIL": "pillow",
    "open_clip": "open-clip-torch",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
}
"""Import names that differ from their distribution's name; the others are the same."""

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def extras_providing(module: str) -> list[str]:
    """The extras of vtsel whose requirements include the distribution of ``module`` (a
    top-level import name), in the order pyproject.toml lists them; empty if none does."""
    wanted = normalized(IMPORT_NAMES.get(module, module))
    found: list[str] = []
    for requirement in metadata.requires("vtsel") or []:
        name, extra = _REQUIREMENT.match(requirement), _EXTRA.search(requirement)
        if name and extra and normalized(name.group(1)) == wanted and extra.group(1) not in found:
            found.append(extra.group(1))
    return found


def missing_extra_message(error: ModuleNotFoundError, command: str) -> str | None:
    """What to install when ``command`` stopped at ``error``, or ``None`` if no extra of vtsel
    provides the missing module (then the error is a real bug and is raised as it is)."""
    module = (error.name or "").split(".")[0]
    extras = extras_providing(module)
    if not extras:
        return None
    extra, invoked = extras[0], " ".join(["vtsel", command]).strip()
    return (
        f"`{invoked}` needs {module!r}, which comes with vtsel's [{extra}] extra: "
        f"pip install 'vtsel[{extra}]'"
    )
