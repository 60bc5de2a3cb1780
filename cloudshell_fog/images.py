"""
OCI image references: parsing and the facts policy needs about them.

Grammar (after the distribution reference grammar):
C{[registry[:port]/]path[:tag][@sha256:<64 hex>]}.  A reference whose first
component has a dot, a colon or is C{localhost} names its registry; otherwise
the registry is C{docker.io}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?)"
_REFERENCE = re.compile(
    rf"^(?:(?P<registry>{_REGISTRY})/)?"
    rf"(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)  # used with fullmatch: "$" would accept a trailing newline
MAX_LENGTH = 512


class ImageRefError(ValueError):
    """An image reference that does not follow the OCI reference grammar."""


@dataclass(frozen=True)
class ImageRef:
    registry: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def pinned(self) -> bool:
        """True when the reference names a content digest."""
        return self.digest is not None


def parse_image_ref(text: str) -> ImageRef:
    """Parse C{text}; raise L{ImageRefError} with a sentence saying what is wrong."""
    if len(text) > MAX_LENGTH:
        raise ImageRefError(f"image_ref is longer than {MAX_LENGTH} characters")
    match = _REFERENCE.fullmatch(text)
    if match is None:
        if "@" in text and not re.search(r"@sha256:[0-9a-f]{64}\Z", text):
            raise ImageRefError("image_ref has a malformed digest; use name@sha256:<64 lowercase hex>")
        raise ImageRefError(
            "image_ref is not a valid OCI image reference (expected registry/name[:tag][@sha256:<64 hex>])"
        )
    registry, path = match["registry"], match["path"]
    if registry is None or not ("." in registry or ":" in registry or registry == "localhost"):
        # "library/busybox" or "user/repo": the first component is a path, not a registry.
        if registry is not None:
            path = f"{registry}/{path}"
            if not re.fullmatch(rf"{_COMPONENT}(?:/{_COMPONENT})*", path):
                raise ImageRefError("image_ref is not a valid OCI image reference")
        registry = "docker.io"
    return ImageRef(registry=registry, path=path, tag=match["tag"], digest=match["digest"])
