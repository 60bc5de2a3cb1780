"""Unit tests for cloudshell_fog.images.parse_image_ref."""

from __future__ import annotations

import pytest

from cloudshell_fog.images import MAX_LENGTH, ImageRef, ImageRefError, parse_image_ref

HEX = "0123456789abcdef" * 4
DIGEST = "sha256:" + HEX


@pytest.mark.parametrize(
    ("text", "registry", "path", "tag", "digest"),
    [
        ("busybox", "docker.io", "busybox", None, None),
        ("busybox:1.36", "docker.io", "busybox", "1.36", None),
        ("library/busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("user/repo", "docker.io", "user/repo", None, None),
        ("docker.io/library/busybox:latest", "docker.io", "library/busybox", "latest", None),
        ("ghcr.io/org/img:tag", "ghcr.io", "org/img", "tag", None),
        ("ghcr.io/org/team/img", "ghcr.io", "org/team/img", None, None),
        ("localhost/x", "localhost", "x", None, None),
        (f"localhost:5000/x@{DIGEST}", "localhost:5000", "x", None, DIGEST),
        (f"registry.example.com:443/team/app:v1@{DIGEST}", "registry.example.com:443", "team/app", "v1", DIGEST),
        (f"myhost:5000/app@{DIGEST}", "myhost:5000", "app", None, DIGEST),
        (f"busybox@{DIGEST}", "docker.io", "busybox", None, DIGEST),
        ("Registry.Example.COM/app", "Registry.Example.COM", "app", None, None),
        ("ghcr.io/my_org/my-img.v2__x:Tag_1.0-rc", "ghcr.io", "my_org/my-img.v2__x", "Tag_1.0-rc", None),
        ("a:" + "t" * 128, "docker.io", "a", "t" * 128, None),
    ],
)
def test_parse_valid(text, registry, path, tag, digest):
    """A valid reference parses into its registry, path, tag and digest; pinned follows the digest."""
    ref = parse_image_ref(text)
    assert ref == ImageRef(registry=registry, path=path, tag=tag, digest=digest)
    assert ref.pinned is (digest is not None)


def test_parse_at_max_length():
    """A reference of exactly MAX_LENGTH characters is accepted."""
    text = "ghcr.io/" + "a" * (MAX_LENGTH - len("ghcr.io/"))
    assert len(text) == MAX_LENGTH
    assert parse_image_ref(text).path == "a" * (MAX_LENGTH - len("ghcr.io/"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("", "not a valid OCI image reference", id="empty"),
        pytest.param("ghcr.io/Org/img", "not a valid OCI image reference", id="uppercase-path"),
        pytest.param("Busybox", "not a valid OCI image reference", id="uppercase-single"),
        pytest.param("Library/busybox", "not a valid OCI image reference", id="uppercase-first-component"),
        pytest.param("busybox@sha256:abc", "malformed digest", id="digest-too-short"),
        pytest.param(f"busybox@{DIGEST}0", "malformed digest", id="digest-too-long"),
        pytest.param("busybox@sha256:" + "A" * 64, "malformed digest", id="digest-uppercase-hex"),
        pytest.param("busybox@sha512:" + "a" * 64, "malformed digest", id="digest-wrong-algorithm"),
        pytest.param("busybox@", "malformed digest", id="digest-empty"),
        pytest.param("busy box", "not a valid OCI image reference", id="space-inside"),
        pytest.param(" busybox", "not a valid OCI image reference", id="leading-space"),
        pytest.param("busybox ", "not a valid OCI image reference", id="trailing-space"),
        pytest.param("busybox:", "not a valid OCI image reference", id="empty-tag"),
        pytest.param("busybox:.tag", "not a valid OCI image reference", id="tag-leading-dot"),
        pytest.param("a:" + "t" * 129, "not a valid OCI image reference", id="tag-too-long"),
        pytest.param("/busybox", "not a valid OCI image reference", id="leading-slash"),
        pytest.param("ghcr.io/", "not a valid OCI image reference", id="registry-only"),
        pytest.param("ghcr.io//img", "not a valid OCI image reference", id="empty-component"),
        pytest.param("ghcr.io/img-", "not a valid OCI image reference", id="trailing-separator"),
        pytest.param("ghcr.io/-img", "not a valid OCI image reference", id="leading-separator"),
        pytest.param("ghcr.io/img/", "not a valid OCI image reference", id="trailing-slash"),
        pytest.param("ghcr.io:port/img", "not a valid OCI image reference", id="registry-port-not-number"),
        pytest.param("a" * (MAX_LENGTH + 1), f"longer than {MAX_LENGTH}", id="too-long"),
        pytest.param("ghcr.io/" + "a" * MAX_LENGTH, f"longer than {MAX_LENGTH}", id="too-long-with-registry"),
        pytest.param(
            "busybox\n",
            "not a valid OCI image reference",
            id="trailing-newline",
        ),
    ],
)
def test_parse_invalid(text, message):
    """An invalid reference raises ImageRefError (a ValueError) with a sentence saying what is wrong."""
    with pytest.raises(ImageRefError) as info:
        parse_image_ref(text)
    assert isinstance(info.value, ValueError)
    assert message in str(info.value)
    assert str(info.value).startswith("image_ref ")
    assert "\n" not in str(info.value)


def test_error_does_not_echo_input():
    """The error message does not repeat the rejected reference."""
    with pytest.raises(ImageRefError) as info:
        parse_image_ref("evil/<script>")
    assert "<script>" not in str(info.value)
