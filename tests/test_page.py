"""The browser terminal's page and files are served without credentials, and nothing else is."""

import pytest
import pytest_twisted


@pytest_twisted.ensureDeferred
async def test_page_is_served_with_a_strict_policy(gateway):
    """GET / answers the page with a Content-Security-Policy and no caching of stale code."""
    page = await gateway.request("GET", "/", token=None)
    assert page.status == 200 and page.header("Content-Type").startswith("text/html")
    policy = page.header("Content-Security-Policy")
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert page.header("Referrer-Policy") == "no-referrer"


@pytest.mark.parametrize("path", ["/static/../api.py", "/static/%2e%2e/api.py", "/static/..%2fapi.py",
                                  "/static/", "/static/nothing.js", "/static/../../config.py",
                                  "/static/index.html/..", "/static//etc/passwd"])
@pytest_twisted.ensureDeferred
async def test_static_files_never_leave_their_folder(gateway, path):
    """Traversal, unknown and odd paths under /static are 404."""
    response = await gateway.request("GET", path, token=None)
    assert response.status == 404, (path, response)


@pytest_twisted.ensureDeferred
async def test_static_file_is_served(gateway):
    """A file of the page is served with its media type."""
    response = await gateway.request("GET", "/static/index.html", token=None)
    assert response.status == 200 and response.header("X-Content-Type-Options") == "nosniff"
