"""The guards of tests/conftest.py: no network, only the built-in plugins (unless a test opts in)."""

from __future__ import annotations

import os
import socket
import threading

import pytest

REMOTE = ("93.184.216.34", 80)  # example.com's old address; nothing is ever sent to it


def test_a_remote_connection_is_blocked_with_a_clear_message(network_guard):
    with network_guard.expected():  # the attempts below are the point of this test: they must not fail it
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            with pytest.raises(network_guard.Error, match=r"must not use the network: socket.connect to "
                                                          r"93\.184\.216\.34:80"):
                sock.connect(REMOTE)
            with pytest.raises(network_guard.Error, match="93.184.216.34"):
                sock.connect_ex(REMOTE)
        finally:
            sock.close()
        with pytest.raises(network_guard.Error, match=r"create_connection to 93\.184\.216\.34:80"):
            socket.create_connection(REMOTE, timeout=1)
        with pytest.raises(network_guard.Error, match="create_connection to example.com:443"):  # before any DNS
            socket.create_connection(("example.com", 443), timeout=1)
        with pytest.raises(network_guard.Error, match="getaddrinfo of 'example.com'"):  # no DNS query either
            socket.getaddrinfo("example.com", 443)
        with pytest.raises(network_guard.Error):
            socket.create_connection(("::ffff:93.184.216.34", 80), timeout=1)


def test_an_attempt_that_the_code_swallows_still_fails_the_test(network_guard):
    """A library that catches the error (and carries on "offline") does not hide the attempt: the hooks call
    ``check`` after each phase, which fails the test."""
    try:
        socket.create_connection(REMOTE, timeout=1)
    except Exception:
        pass
    with pytest.raises(pytest.fail.Exception, match=r"tried to use the network.*93\.184\.216\.34:80"):
        network_guard.check()
    network_guard.check()  # checked once: the record is cleared, this test passes


def test_localhost_and_unix_sockets_are_let_through(tmp_path):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = threading.Thread(target=lambda: server.accept()[0].close())
    accepted.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        accepted.join(timeout=10)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            assert isinstance(client.connect_ex(("localhost", port)), int)  # an errno at worst, never blocked
    finally:
        server.close()
    assert socket.getaddrinfo("localhost", port)
    try:  # this machine's own name (torch.distributed uses it) is not blocked; it may not resolve everywhere
        socket.getaddrinfo(socket.gethostname(), port)
    except socket.gaierror:
        pass
    if socket.has_ipv6:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as client:
            assert isinstance(client.connect_ex(("::1", port)), int)
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix_server:
        unix_server.bind(path)
        unix_server.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)


def test_only_the_builtin_plugins_load_by_default():
    from ragcun.plugins import get_host

    assert os.environ["RAGCUN_LOAD_PLUGINS"] == ""  # inherited by the subprocesses a test starts
    assert all(record.builtin for record in get_host().plugin_records())
    assert ("head", "gaussian") in get_host().registry


@pytest.mark.needs_plugins("ragcun-mlp")  # opts in: the installed example plugin loads
def test_a_test_that_needs_the_example_plugin_opts_in():
    from ragcun.plugins import get_host

    from ragcun.cli.root import build_cli

    assert "RAGCUN_LOAD_PLUGINS" not in os.environ
    assert get_host().registry.get("head", "mlp").provider == "ragcun-mlp"
    assert "params" in build_cli().commands  # the plugin's command, in the (cached) click group too


def test_after_the_opt_in_the_next_test_is_isolated_again():
    from ragcun.plugins import get_host

    from ragcun.cli.root import build_cli

    assert ("head", "mlp") not in get_host().registry
    assert "params" not in build_cli().commands and "train" in build_cli().commands


_LEAKY_TEST = '''
import subprocess, sys, time
from pathlib import Path

def test_leaves_a_child(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    Path({pid_file!r}).write_text(str(child.pid))
    if {wait}:
        time.sleep(300)
'''


@pytest.mark.parametrize("how", ["test ends", "SIGTERM", "Ctrl-C"])
def test_no_process_a_test_started_outlives_the_session(tmp_path, how):
    """The no-orphans plugin ends a child a test left running: after the test, and when the session is
    interrupted (SIGTERM as from CI, SIGINT as Ctrl-C) while the test still runs."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    pid_file = tmp_path / "child.pid"
    (tmp_path / "test_leaky.py").write_text(_LEAKY_TEST.format(pid_file=str(pid_file), wait=how != "test ends"))
    # Ctrl-C must reach the inner session even when this one runs in the background of a shell without job
    # control (`pytest ... &` in a script, as CI may), where SIGINT is ignored and children inherit that: the
    # inner Python would keep SIGINT ignored and hang, so it restores the default handler first.
    start = ("import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "sys.exit(pytest.main(sys.argv[1:]))")
    session = subprocess.Popen([sys.executable, "-c", start, "-q", "-p", "ragcun.testing.no_orphans",
                                "-p", "no:cacheprovider", str(tmp_path / "test_leaky.py")], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    child = None
    try:
        deadline = time.monotonic() + 120
        while not pid_file.is_file() or not pid_file.read_text():
            assert session.poll() is None or pid_file.is_file(), session.stdout.read().decode()
            assert time.monotonic() < deadline, "the inner test never started its child"
            time.sleep(0.2)
        pid = int(pid_file.read_text())
        if how != "test ends":
            time.sleep(1)
            session.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
        try:
            session.wait(timeout=120)
        except subprocess.TimeoutExpired:  # say what the inner session printed, not only that it hung
            session.kill()
            raise AssertionError(f"the pytest session did not end within 120 s of {how}; it printed:\n"
                                 + session.communicate()[0].decode(errors="replace")[-4000:]) from None
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            child = psutil.Process(pid)
        assert not _alive(pid), f"the child {pid} outlived the pytest session ({how})"
    finally:
        if session.poll() is None:
            session.kill()
        if child is not None:
            child.kill()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
