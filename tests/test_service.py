"""The plugin's Options and service wiring, without a reactor."""

import pytest

from cloudshell_fog.config import listen_endpoint
from cloudshell_fog.service import Options, _loopback_only
from support import write_config


@pytest.mark.parametrize(
    "address, loopback",
    [(":8080", False), ("0.0.0.0:80", False), ("[::]:80", False), ("10.0.0.5:80", False),
     ("127.0.0.1:8080", True), ("127.9.9.9:1", True), ("[::1]:8080", True), ("unix:/run/x.sock", True)],
)
def test_loopback_detection(address, loopback):
    """Development mode warns when it listens beyond loopback."""
    assert _loopback_only(listen_endpoint(address)) is loopback


def test_options_take_repeatable_listen_and_files(tmp_path, monkeypatch):
    """--listen repeats and overrides LISTEN_ADDR; --policy and --nodes override the env files."""
    env = write_config(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LISTEN_ADDR", ":9999")
    options = Options()
    options.parseOptions(["--listen", "127.0.0.1:1", "--listen", "[::1]:2",
                          "--policy", env["POLICY_FILE"], "--nodes", env["NODES_FILE"]])
    assert options["config"].listen == ("tcp:1:interface=127.0.0.1", "tcp:2:interface=\\:\\:1")
    assert options["config"].policy_file == env["POLICY_FILE"]


def test_options_stop_with_one_line_on_a_bad_value(tmp_path, monkeypatch, capsys):
    """A configuration error exits 2 with one line on stderr, not twistd's usage text."""
    for name, value in write_config(tmp_path).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        Options().parseOptions(["--listen", "nowhere"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cloudshell-fog: configuration error: --listen: address:")
