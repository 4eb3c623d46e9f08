import subprocess
import sys

import pytest

from moebench.errors import UsageError
from moebench.registry import METHODS, TASKS, Registry


def test_builtins_come_from_entry_points():
    assert {"vanilla", "load_balancing"} <= set(METHODS.names())
    assert {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"} <= set(TASKS.names())
    assert METHODS.get("load_balancing").name == "load_balancing"


def test_unknown_name_suggests_and_lists_valid_names():
    with pytest.raises(UsageError) as error:
        METHODS.get("load_balance")
    message = str(error.value)
    assert "Did you mean 'load_balancing'?" in message
    assert "vanilla" in message


def test_targets_load_lazily_and_clashes_raise():
    registry = Registry("thing", "moebench.no-such-group")
    registry.register("json_dumps", "json:dumps")
    assert registry._targets["json_dumps"] == "json:dumps"  # not imported until asked for
    import json

    assert registry.get("json_dumps") is json.dumps
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("json_dumps", "json:loads")


def test_descriptions_read_without_import_equal_the_loaded_ones():
    fresh = Registry("method", "moebench.methods")
    for name in METHODS.names():
        assert fresh.description(name) == METHODS.get(name).description != ""
    assert all(isinstance(target, str) for target in fresh._targets.values())  # nothing was imported


def test_what_a_board_reads_of_a_method_is_read_without_import_and_equals_the_loaded_class():
    fresh = Registry("method", "moebench.methods")
    for name in METHODS.names():
        for attribute in ("control", "board_columns", "uses_moe"):
            assert fresh.declared(name, attribute) == getattr(METHODS.get(name), attribute), (name, attribute)
    assert fresh.declared("control_lr", "control") is True and fresh.declared("vanilla", "control") is False
    assert all(isinstance(target, str) for target in fresh._targets.values())  # nothing was imported


def test_an_attribute_the_source_cannot_tell_is_asked_of_the_loaded_class(tmp_path, monkeypatch):
    (tmp_path / "declared_plugin.py").write_text(
        "from moebench.method import Method\n\n\n"
        "class Literal(Method):\n    control = True\n\n\n"
        "class Inherited(Literal):\n    pass\n\n\n"
        "class Computed(Method):\n    board_columns = {name: (name, 3) for name in ('a', 'b')}\n\n\n"
        "class Property(Method):\n    @property\n    def control(self):\n        return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("method", "moebench.no-such-group")
    for name in ("Literal", "Inherited", "Computed", "Property"):
        registry.register(name, f"declared_plugin:{name}")
    assert registry.declared("Inherited", "control") is True  # a base in the same module
    assert registry.declared("Inherited", "board_columns") == {}  # Method's, followed through the import
    assert "declared_plugin" not in sys.modules
    assert registry.declared("Computed", "board_columns") == {"a": ("a", 3), "b": ("b", 3)}  # not a literal: imported
    assert isinstance(registry.declared("Property", "control"), property)  # as getattr on the class says


def test_list_and_help_import_neither_torch_nor_scipy():
    """`moebench --help` and `moebench list` answer at once: the heavy libraries stay unimported."""
    code = ("import sys, contextlib, io\nfrom moebench.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['list', 'methods']); main(['list', 'tasks'])\n"
            "    try: main(['--help'])\n    except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'scipy', 'transformers', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
