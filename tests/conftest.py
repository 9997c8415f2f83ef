"""The test-suite infrastructure of ragcun's own tests (``tests/``; the plugins' tests have their own conftest).

* Fixtures: ragcun's shared fixtures (``tiny_model_dir``, ``data_dir``, ``single_thread``, ...) are opt-in;
  this conftest opts in with ``pytest_plugins`` below.
* No network: any attempt, in a test or in a fixture, to connect a socket to (or resolve the name of) a host
  that is not this machine fails the test with a message naming the address. Localhost (``127.*``, ``::1``,
  ``localhost``, this machine's hostname) and unix sockets stay allowed, so gloo process groups work. The
  attempt raises :class:`NetworkAccessBlocked`, and is also recorded, so a library that catches the error
  (and falls back to "offline") does not hide it: the test fails all the same at the end of the phase.
  ``tests/test_test_guards.py`` shows the guard at work.
* No orphans: every process a test starts is ended after the test and when the session ends, Ctrl-C and
  SIGTERM included (:mod:`ragcun.testing.no_orphans`).
* Only the built-in plugins: third-party plugins installed in the environment (the example plugins
  ragcun-mlp and ragcun-mpnet, anything else pip installed) are not loaded, so the core tests do not depend
  on what else is installed. Each test runs with ``RAGCUN_LOAD_PLUGINS=""`` (the empty allow-list of
  :mod:`ragcun.plugins`, inherited by the subprocesses a test starts) and a fresh plugin host. A test that
  needs the installed plugins says so with ``@pytest.mark.needs_plugins("ragcun-mlp")``: it runs with every
  installed plugin loaded (``RAGCUN_LOAD_PLUGINS`` and ``RAGCUN_DISABLE_PLUGINS`` unset), and is skipped
  (failed under CI=true) when a named distribution is not installed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
from importlib import metadata
from pathlib import Path

import pytest

pytest_plugins = ["ragcun.testing.fixtures", "ragcun.testing.no_orphans"]  # no orphans: see that module


# -- no network ----------------------------------------------------------------------------------------------
class NetworkAccessBlocked(RuntimeError):
    """A test tried to reach another machine. (Not an OSError, so no "offline" fallback swallows it.)"""


_INHERITED = object()
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _host_text(host) -> str:
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    return str(host).strip("[]").split("%", 1)[0].lower()  # "[::1]", "fe80::1%eth0"


def _ip_address(host):
    try:
        return ipaddress.ip_address(_host_text(host))
    except ValueError:
        return None


def _is_local_host(host) -> bool:
    if host is None:  # getaddrinfo(None, port): the local wildcard/loopback address
        return True
    text = _host_text(host)
    if text in ("", "0.0.0.0", "::") or text in _LOCAL_NAMES or text in _OWN_NAMES or text.endswith(".localhost"):
        return True
    address = _ip_address(text)
    if address is None:
        return False  # a name that is not this machine's
    if getattr(address, "ipv4_mapped", None):
        address = address.ipv4_mapped
    return address.is_loopback


def _own_names() -> set[str]:
    try:
        return {socket.gethostname().lower()}
    except OSError:
        return set()


_OWN_NAMES = _own_names()


class NetworkGuard:
    """Patches socket connect/resolve functions for the duration of a test phase; records what was blocked."""

    Error = NetworkAccessBlocked

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._expected = 0
        self._saved: list[tuple[object, str, object]] = []

    # -- the patched functions --
    def _refuse(self, what: str) -> None:
        message = (f"ragcun's tests must not use the network: {what} was blocked (only localhost and unix sockets "
                   "are allowed; use local files or a fake instead; tests/conftest.py explains the guard)")
        if not self._expected:
            self.attempts.append(what)
        raise NetworkAccessBlocked(message)

    def _check_address(self, sock, address, call: str) -> None:
        family = getattr(sock, "family", None)
        if family is not None and family not in (socket.AF_INET, socket.AF_INET6):
            return  # unix sockets, netlink, ...
        if isinstance(address, (str, bytes)) or not isinstance(address, tuple) or not address:
            return  # not an internet address
        if not _is_local_host(address[0]):
            host = address[0] if len(address) < 2 else f"{address[0]}:{address[1]}"
            self._refuse(f"{call} to {host}")

    def install(self) -> None:
        if self._saved:
            return
        guard = self
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
        real_create_connection, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

        def connect(sock, address):
            guard._check_address(sock, address, "socket.connect")
            return real_connect(sock, address)

        def connect_ex(sock, address):
            guard._check_address(sock, address, "socket.connect_ex")
            return real_connect_ex(sock, address)

        def create_connection(address, *args, **kwargs):
            if isinstance(address, tuple) and address and not _is_local_host(address[0]):
                guard._refuse(f"socket.create_connection to {address[0]}:{address[1] if len(address) > 1 else ''}")
            return real_create_connection(address, *args, **kwargs)

        def getaddrinfo(host, *args, **kwargs):
            # a literal address resolves without the network (connecting to it is checked above);
            # a name that is not this machine's would be sent to a DNS server
            if not _is_local_host(host) and _ip_address(host) is None:
                guard._refuse(f"socket.getaddrinfo of {host!r}")
            return real_getaddrinfo(host, *args, **kwargs)

        for owner, name, new in ((socket.socket, "connect", connect), (socket.socket, "connect_ex", connect_ex),
                                 (socket, "create_connection", create_connection),
                                 (socket, "getaddrinfo", getaddrinfo)):
            self._saved.append((owner, name, vars(owner).get(name, _INHERITED)))
            setattr(owner, name, new)

    def uninstall(self) -> list[str]:
        """Undo the patches; return (and forget) the attempts blocked since the last call."""
        for owner, name, original in reversed(self._saved):
            if original is _INHERITED:  # socket.socket.connect comes from _socket.socket: leave no copy behind
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()
        return self.take()

    def take(self) -> list[str]:
        attempts, self.attempts = self.attempts, []
        return attempts

    def check(self, phase: str = "call") -> None:
        """Fail (pytest.fail) if anything was blocked since the last check: the end-of-phase check of the hooks."""
        attempts = self.take()
        if attempts:
            _fail_for(attempts, phase)

    @contextlib.contextmanager
    def expected(self):
        """Within this block blocked attempts still raise, but do not fail the test (for the guard's own tests)."""
        self._expected += 1
        try:
            yield self
        finally:
            self._expected -= 1


_GUARD = NetworkGuard()


def _fail_for(attempts: list[str], phase: str) -> None:
    pytest.fail(f"the test's {phase} tried to use the network (blocked by tests/conftest.py): "
                + "; ".join(attempts), pytrace=False)


def _guarded_phase(phase: str):
    _GUARD.install()
    try:
        result = yield
    finally:
        attempts = _GUARD.uninstall()
    if attempts:  # blocked, and the error was caught somewhere: fail all the same
        _fail_for(attempts, phase)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _guarded_phase("setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _guarded_phase("call"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    return (yield from _guarded_phase("teardown"))


@pytest.fixture()
def network_guard() -> NetworkGuard:
    """The active guard (``.Error``, ``.expected()``, ``.check()``), for tests of the guard itself."""
    return _GUARD


# -- only the built-in plugins ---------------------------------------------------------------------------------
PLUGIN_ENV = ("RAGCUN_LOAD_PLUGINS", "RAGCUN_DISABLE_PLUGINS")


def _set_env(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _missing_distributions(names) -> list[str]:
    missing = []
    for name in names:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return missing


_TESTS_DIR = Path(__file__).resolve().parent
_cli_built_for: str | None = None  # "builtins" or "plugins": what the cached `ragcun` click group was built with


def _reset_cli() -> None:
    """Forget the `ragcun` click group that build_cli() built once per process (with the plugins loaded then):
    the next build_cli() adds every plugin's commands again. The group has no commands of its own: all of them,
    the built-in ones included, come from the register_commands hook."""
    root = sys.modules.get("ragcun.cli.root")
    if root is not None and getattr(root, "_built", False):
        root.cli.commands.clear()
        root._built = False


def _in_tests(item) -> bool:
    return item is not None and _TESTS_DIR in Path(item.path).resolve().parents


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _cli_built_for
    if not _in_tests(item):  # this hook is called for every test of the session, the plugins' ones too
        return (yield)
    from ragcun.plugins import reset_host

    mode = "plugins" if item.get_closest_marker("needs_plugins") else "builtins"
    saved = {key: os.environ.get(key) for key in PLUGIN_ENV}
    if mode == "builtins":
        _set_env({"RAGCUN_LOAD_PLUGINS": "", "RAGCUN_DISABLE_PLUGINS": None})  # the built-ins only
    else:
        _set_env(dict.fromkeys(PLUGIN_ENV))  # every installed plugin
    reset_host()  # the process-wide host is rebuilt from that environment on first use
    if _cli_built_for != mode:
        _reset_cli()
        _cli_built_for = mode
    try:
        return (yield)
    finally:
        _set_env(saved)
        reset_host()
        if not _in_tests(nextitem) or mode == "plugins":  # leave no plugin state to the next test
            _reset_cli()
            _cli_built_for = None


@pytest.fixture(autouse=True)
def _skip_without_needed_plugins(request) -> None:
    """``needs_plugins("dist", ...)``: skipped (failed under CI=true) when a named distribution is not installed."""
    marker = request.node.get_closest_marker("needs_plugins")
    missing = _missing_distributions(marker.args) if marker is not None else []
    if missing:
        message = (f"needs the plugin distribution(s) {', '.join(missing)} installed "
                   "(pip install -e plugins/<name>)")
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
