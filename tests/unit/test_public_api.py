"""The public surface: what ``taskfleet`` and its documented submodules export, what the docs and
examples import, the version, and what importing taskfleet leaves alone."""

from __future__ import annotations

import ast
import configparser
import importlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import taskfleet

ROOT = Path(__file__).resolve().parents[2]

#: Each module's public names (its ``__all__``), as one string per module.
PUBLIC_NAMES = {
    "taskfleet": (
        "AddressInUseError AuthenticationSettings Configuration ConfigurationError DecodeError "
        "InputError MetricsSettings NonRetryableError OutputError ResultTimeout SourceError "
        "Task TaskClient "
        "TaskContext TaskError TaskHandler TaskInProgress TaskLog TaskOutcome TaskResult "
        "TaskStatus TaskfleetError Worker WorkerInterface WorkerOptions add_log "
        "get_task_context worker_task"
    ),
    "taskfleet.hooks": "HOOK_NAMES HookBase call_hooks",
    "taskfleet.native": (
        "ARG_TYPES NativeCallError NativeFunction NativeLibrary NativeLibraryError "
        "RETURN_TYPES TerminalNativeCallError native_worker output_buffer"
    ),
    "taskfleet.testing": (
        "ConductorTestServer Job NatsCluster NatsServer Outcome RequestRecord "
        "embedded_nats nats_cluster"
    ),
}
PUBLIC = {module: names.split() for module, names in PUBLIC_NAMES.items()}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_the_public_names_are_pinned_and_all_resolve(name):
    module = importlib.import_module(name)
    assert sorted(module.__all__) == PUBLIC[name], "a public name was added or removed: say so here"
    for attr in module.__all__:
        assert getattr(module, attr) is not None, f"{name}.{attr}"


def test_hook_base_is_exported_from_taskfleet_hooks():
    from taskfleet.hooks import HookBase

    assert all(callable(getattr(HookBase(), hook)) for hook in taskfleet.hooks.HOOK_NAMES)


def _code_of_docs_and_examples() -> list[tuple[str, str]]:
    blocks = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        parts = page.read_text().split("```")
        for i in range(1, len(parts), 2):
            language, _, code = parts[i].partition("\n")
            if language.strip() in ("python", "py"):
                blocks.append((f"{page.relative_to(ROOT)} block {i // 2 + 1}", code))
    for path in sorted((ROOT / "examples").rglob("*.py")):
        blocks.append((str(path.relative_to(ROOT)), path.read_text()))
    return blocks


def test_docs_and_examples_import_only_public_names():
    private = []
    for where, code in _code_of_docs_and_examples():
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("taskfleet"):
                names = [alias.name for alias in node.names]
                public = PUBLIC.get(node.module or "")
                if public is None:
                    private.append(f"{where}: module {node.module}")
                else:
                    private += [f"{where}: {node.module}.{n}" for n in names if n not in public]
            elif isinstance(node, ast.Import):
                private += [
                    f"{where}: module {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("taskfleet") and alias.name not in PUBLIC
                ]
    assert not private, private


def _setup_cfg_version() -> str:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return setup["metadata"]["version"]


def test_the_version_is_the_one_setup_cfg_defines():
    assert taskfleet.__version__ == _setup_cfg_version()


def test_a_source_tree_without_package_metadata_reads_the_version_from_setup_cfg(monkeypatch):
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert taskfleet._version() == _setup_cfg_version()


IMPORT_PROBE = """
import os
import sys

calls = []
real = os.register_at_fork


def recording(**kwargs):
    calls.append(sys._getframe(1).f_globals.get("__name__", "?"))
    real(**kwargs)


os.register_at_fork = recording
from prometheus_client import values

value_class = values.ValueClass
import taskfleet
import taskfleet.hooks
import taskfleet.native
import taskfleet.testing
from taskfleet import TaskClient, TaskHandler, worker_task

print("import", sorted(c for c in calls if c.startswith("taskfleet")))
print("patched", values.ValueClass is not value_class)
from taskfleet import _metrics

_metrics.setup(None)
_metrics.setup(None)
print("setup", sorted(c for c in calls if c.startswith("taskfleet")))
"""


def test_importing_taskfleet_registers_no_fork_handler_and_patches_nothing():
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == [
        "import []",
        "patched False",
        "setup ['taskfleet._metrics']",  # the first set-up of metrics, once
    ]
