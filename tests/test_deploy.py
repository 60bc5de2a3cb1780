"""The deployment files are usable: the systemd unit verifies, nginx forwards WebSocket upgrades."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_unit_verifies(tmp_path):
    """systemd-analyze verify finds nothing wrong with the unit (ExecStart pointed at this venv's twistd)."""
    unit = (DEPLOY / "cloudshell-fog.service").read_text()
    unit = unit.replace("/opt/cloudshell-fog/venv/bin/twistd", str(Path(sys.executable).parent / "twistd"))
    path = tmp_path / "cloudshell-fog.service"
    path.write_text(unit)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "cloudshell-fog.service" in line]
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr


def test_nginx_config_upgrades_websockets_and_hides_queries():
    """The proxy passes Upgrade/Connection, speaks HTTP/1.1 upstream, and logs $uri, not $request."""
    conf = (DEPLOY / "nginx.conf").read_text()
    assert "proxy_http_version 1.1;" in conf
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    log_format = conf.split("log_format cloudshell", 1)[1].split(";", 1)[0]
    assert "$uri" in log_format and "$request " not in log_format and "$args" not in log_format
