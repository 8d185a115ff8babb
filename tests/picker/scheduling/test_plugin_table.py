"""The plugin table in picker/README.md is generated from the plugins and must match them."""

from pathlib import Path

from frontier_picker.scheduling import plugin_table
from frontier_picker.scheduling.framework import plugin

README = Path(__file__).resolve().parents[3] / "picker" / "README.md"


def test_readme_plugin_table_is_up_to_date():
    assert plugin_table.table() in README.read_text(), (
        "picker/README.md is stale: run python -m frontier_picker.scheduling.plugin_table picker/README.md"
    )


def test_every_plugin_documents_itself():
    for type_name, cls in plugin.registered().items():
        assert cls.__doc__ and cls.formula and cls.intent, type_name


def test_regenerating_replaces_only_the_section():
    page = "# Picker\n\nprotocol text\n"
    once = plugin_table.updated(page)
    assert once.startswith(page.rstrip("\n"))
    assert plugin_table.updated(once + "\n## Later section\n") == once + "\n## Later section\n"
