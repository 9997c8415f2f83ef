"""Builds the pluggy PluginManager, loads the built-ins and pip-installed plugins, and fills the registry.

Plugins come from the entry-point group ``ragcun``::

    [project.entry-points.ragcun]
    mything = "ragcun_mything.plugin"

Environment variables:

* ``RAGCUN_LOAD_PLUGINS``: comma-separated allow-list of plugin (entry-point or distribution) names to
  load. Set but empty means no third-party plugin at all. The built-ins always load.
* ``RAGCUN_DISABLE_PLUGINS``: comma-separated block-list.

A plugin that fails to import, implements a hook that does not exist, or raises while registering is
recorded (``ragcun plugins`` shows the error) and left out; everything else keeps working.
"""

from __future__ import annotations

import importlib
import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from ragcun import hookspecs
from ragcun.registry import KINDS, PLURALS, RegistryError, Registry

ENTRY_POINT_GROUP = "ragcun"
BUILTIN_PROVIDER = "ragcun"
DEFAULT_PLUGIN_MODULES = (
    "ragcun.default_plugins.encoders",
    "ragcun.default_plugins.heads",
    "ragcun.default_plugins.distances",
    "ragcun.default_plugins.losses",
    "ragcun.default_plugins.evaluators",
    "ragcun.default_plugins.commands",
)


@dataclass
class PluginRecord:
    """What ``ragcun plugins`` reports about one plugin."""

    name: str
    distribution: str
    version: str
    module: str
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "module": self.module, "builtin": self.builtin, "hooks": sorted(self.hooks),
                "status": "error" if self.error else "ok", "error": self.error}


def _env_list(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {v.strip().lower() for v in value.split(",") if v.strip()}


class PluginHost:
    """A PluginManager plus what happened while loading each plugin, and the registry they filled."""

    def __init__(self, *, load_entry_points: bool = True, extra_plugins: list[tuple[str, Any]] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        from ragcun import __version__

        for module_name in DEFAULT_PLUGIN_MODULES:
            module = importlib.import_module(module_name)
            self._add(module, PluginRecord(module_name.rsplit(".", 1)[1], BUILTIN_PROVIDER, __version__,
                                           module_name, builtin=True))
        if load_entry_points:
            self._load_entry_points()
        for name, plugin in extra_plugins:
            self._add(plugin, PluginRecord(name, name, "", getattr(plugin, "__name__", type(plugin).__name__)))
        self.registry = Registry()
        self._fill_registry()

    # -- loading -----------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        allow = _env_list("RAGCUN_LOAD_PLUGINS")
        block = _env_list("RAGCUN_DISABLE_PLUGINS") or set()
        seen: set[tuple[str, str]] = set()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else ""
            if (ep.name, ep.value) in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            names = {ep.name.lower(), dist.lower()}
            if (allow is not None and not names & allow) or names & block:
                continue
            record = PluginRecord(ep.name, dist, version, ep.value)
            try:
                plugin = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not take the others down
                record.error = f"import failed: {type(exc).__name__}: {exc}"
                record.traceback = traceback.format_exc()
                self.records[record.name] = record
                continue
            self._add(plugin, record)

    def _add(self, plugin: Any, record: PluginRecord) -> None:
        self.records[record.name] = record
        try:
            self.pm.register(plugin, name=record.name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            record.error = f"invalid plugin: {exc}"
            return
        try:
            # Fails when the plugin implements a hook that does not exist (a misspelling).
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin)
            record.error = f"unknown hook: {exc}"
            return
        record.hooks = [caller.name for caller in self.pm.get_hookcallers(plugin) or []]

    def _provider(self, plugin_name: str) -> str:
        record = self.records.get(plugin_name)
        return record.distribution if record else plugin_name

    def _fill_registry(self) -> None:
        # Call each implementation on its own, so we know which distribution provides each component
        # and a plugin that raises is isolated instead of aborting the whole hook call.
        for kind in KINDS:
            caller = getattr(self.pm.hook, f"register_{PLURALS[kind]}")
            for impl in caller.get_hookimpls():  # registration order: built-ins first
                record = self.records.get(impl.plugin_name)
                if record is not None and record.error:
                    continue
                provider = self._provider(impl.plugin_name)

                def register(name: str, target: Any, _kind: str = kind, _provider: str = provider,
                             **meta: Any) -> None:
                    self.registry.register(_kind, name, target, provider=_provider, **meta)

                try:
                    impl.function(register=register)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:
                    self._fail(impl.plugin_name, f"register_{PLURALS[kind]} raised {type(exc).__name__}: {exc}")

    def _fail(self, plugin_name: str, message: str) -> None:
        record = self.records.get(plugin_name)
        if record is None:
            return
        record.error = message
        if record.builtin:
            raise RegistryError(f"built-in plugin {plugin_name} failed: {message}")
        self.registry.unregister_provider(record.distribution)
        plugin = self.pm.get_plugin(plugin_name)
        if plugin is not None:
            self.pm.unregister(plugin)

    def add_commands(self, cli: Any) -> None:
        """Let every plugin add its click commands; a plugin that raises here is reported, not fatal. The
        built-in commands come first, and a plugin may not replace a command that exists (``train``, or
        ``ablation run`` inside a group), as it may not reuse a component's name: such a plugin is reported as
        failed and contributes nothing."""
        impls = self.pm.hook.register_commands.get_hookimpls()
        builtin = [i for i in impls if getattr(self.records.get(i.plugin_name), "builtin", False)]
        for impl in builtin + [i for i in impls if i not in builtin]:
            record = self.records.get(impl.plugin_name)
            if record is not None and record.error:  # a failed plugin contributes nothing, commands included
                continue
            before = _command_tree(cli)
            try:
                impl.function(cli=cli)
                replaced = [path for path, command in _command_tree(cli).items()
                            if path in before and before[path][0] is not command[0]]
                if replaced:
                    owner = "ragcun" if _is_builtin_command(before[replaced[0]][0]) else "another plugin"
                    raise RegistryError(f"the command {' '.join(replaced[0])!r} exists already (from {owner}); a "
                                        "plugin may add commands but not replace one: give it another name")
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                _restore_commands(cli, before)  # withdraw what it added or replaced
                what = "register_commands" if isinstance(exc, RegistryError) else \
                    f"register_commands raised {type(exc).__name__}"
                self._fail(impl.plugin_name, f"{what}: {exc}")

    def plugin_records(self) -> list[PluginRecord]:
        return sorted(self.records.values(), key=lambda r: (not r.builtin, r.name))


def _command_tree(group: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], tuple[Any, dict | None]]:
    """Every command under ``group`` by its path (``("ablation", "run")``): the command object and, for a group,
    a copy of its own ``commands`` mapping (to put back)."""
    tree = {}
    commands = getattr(group, "commands", None)
    if not isinstance(commands, dict):
        return tree
    for name, command in commands.items():
        sub = getattr(command, "commands", None)
        tree[prefix + (name,)] = (command, dict(sub) if isinstance(sub, dict) else None)
        if isinstance(sub, dict):
            tree.update(_command_tree(command, prefix + (name,)))
    return tree


def _restore_commands(cli: Any, before: dict[tuple[str, ...], tuple[Any, dict | None]]) -> None:
    """Put ``cli``'s command tree back as :func:`_command_tree` saw it."""
    commands = getattr(cli, "commands", None)
    if not isinstance(commands, dict):
        return
    commands.clear()
    commands.update({path[0]: command for path, (command, _) in before.items() if len(path) == 1})
    for (command, sub) in before.values():
        if sub is not None and isinstance(getattr(command, "commands", None), dict):
            command.commands.clear()
            command.commands.update(sub)


def _is_builtin_command(command: Any) -> bool:
    callback = getattr(command, "callback", None)
    return getattr(callback, "__module__", "").startswith("ragcun.") or getattr(type(command), "__module__",
                                                                                 "").startswith("ragcun.")


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, built on first use."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost()
    return _HOST


def explain_missing(kind: str, name: str, provider: str) -> str:
    """Why a saved model's ``kind`` ``name`` (supplied by the distribution ``provider``) is not registered now,
    and what to do: the truth about the package (not installed, installed but disabled, failed to load,
    installed without that component) rather than always "pip install"."""
    from ragcun import __version__

    if provider == BUILTIN_PROVIDER:
        return (f"ragcun {__version__} has no built-in {kind} {name!r} (was the model saved by another version "
                f"of ragcun?); see `ragcun list {PLURALS[kind]}`")
    if not provider or provider == "unknown":
        return f"no installed plugin provides it (see `ragcun list {PLURALS[kind]}` and `ragcun plugins`)"
    host = get_host()
    for record in host.records.values():
        if record.distribution.lower() == provider.lower():
            if record.error:
                return (f"the package {provider!r} is installed but failed to load ({record.error}); "
                        "see `ragcun plugins`")
            return (f"the package {provider!r} ({record.version}) is installed but registers no {kind} {name!r} "
                    "(was the model saved with another version of it?)")
    try:
        version = metadata.version(provider)
    except metadata.PackageNotFoundError:
        return f"the package {provider!r} is not installed: pip install {provider}"
    return (f"the package {provider!r} ({version}) is installed but its plugin is not loaded (disabled by "
            "RAGCUN_LOAD_PLUGINS or RAGCUN_DISABLE_PLUGINS?); see `ragcun plugins`")


def get_registry() -> Registry:
    return get_host().registry


def reset_host(host: PluginHost | None = None) -> None:
    """Replace (or forget) the process-wide host; tests use it after changing plugin env variables."""
    global _HOST
    _HOST = host
