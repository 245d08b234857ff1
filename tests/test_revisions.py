"""The revision graph, loaded through Alembic with no database at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import ConfigError, GraphError, MultipleHeads, UsageError
from runner.revisions import (
    Graph,
    describe_step,
    is_async_env,
    load_config,
    open_script_directory,
    upgrade_steps,
)
from tests.support import Rev, chain, table_rev, write_project, write_revision


def graph(ini: Path) -> Graph:
    return Graph(open_script_directory(load_config(ini, None)))


def pending(g: Graph, target: str, heads: tuple[str, ...]) -> list[str]:
    with g.asking(target):
        return [describe_step(s).revision for s in upgrade_steps(g.script, target, heads)]


def test_pending_lists_revisions_in_application_order(tmp_path: Path) -> None:
    g = graph(write_project(tmp_path, chain(3)))
    assert pending(g, "head", ()) == ["r0000", "r0001", "r0002"]
    assert pending(g, "head", ("r0000",)) == ["r0001", "r0002"]
    assert pending(g, "head", ("r0002",)) == []


def test_alembic_relative_revisions_are_understood(tmp_path: Path) -> None:
    g = graph(write_project(tmp_path, chain(4)))
    assert pending(g, "+1", ("r0000",)) == ["r0001"]
    assert pending(g, "head-1", ()) == ["r0000", "r0001", "r0002"]
    assert pending(g, "base+2", ()) == ["r0000", "r0001"]


def test_multiple_heads_are_refused_naming_the_heads(tmp_path: Path) -> None:
    revs = [table_rev("a", None, "a"), table_rev("b1", "a", "b1"), table_rev("b2", "a", "b2")]
    g = graph(write_project(tmp_path, revs))
    with pytest.raises(MultipleHeads) as info:
        g.check_target("head")
    assert sorted(info.value.heads) == ["b1", "b2"]
    assert "b1" in info.value.reason and "b2" in info.value.reason
    with pytest.raises(MultipleHeads):
        pending(g, "head", ("a",))
    assert sorted(pending(g, "heads", ("a",))) == ["b1", "b2"]


def test_duplicate_revision_ids_are_a_graph_error(tmp_path: Path) -> None:
    ini = write_project(tmp_path, chain(2))
    write_revision(tmp_path / "migrations" / "versions", table_rev("r0001", "r0000", "dup"), 7)
    with pytest.raises(GraphError, match="duplicate revision"):
        graph(ini).load()


def test_revision_with_syntax_error_names_the_file(tmp_path: Path) -> None:
    ini = write_project(tmp_path, [Rev("a", None, upgrade="def broken(:")])
    with pytest.raises(GraphError, match=r"0000_a\.py.*SyntaxError"):
        graph(ini).load()


def test_revision_with_import_error_is_a_graph_error(tmp_path: Path) -> None:
    ini = write_project(tmp_path, [Rev("a", None, header="import no_such_module_here")])
    with pytest.raises(GraphError, match="ModuleNotFoundError"):
        graph(ini).load()


def test_empty_script_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no revisions"):
        graph(write_project(tmp_path, [])).load()


def test_revisions_are_not_loaded_before_they_are_asked_for(tmp_path: Path) -> None:
    """env.py may still move the version locations: opening the project loads nothing."""
    ini = write_project(tmp_path, [Rev("a", None, upgrade="def broken(:")])
    graph(ini)  # no error: the broken file is not read yet


def test_missing_ini_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"alembic\.ini not found"):
        load_config(tmp_path / "alembic.ini", None)


def test_missing_script_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open the migration scripts"):
        open_script_directory(load_config(tmp_path / "none.ini", str(tmp_path / "nowhere")))


def test_unknown_database_revision_is_detected(tmp_path: Path) -> None:
    g = graph(write_project(tmp_path, chain(2)))
    assert g.unknown(("r0001",)) == []
    assert g.unknown(("f00dcafe",)) == ["f00dcafe"]


def test_unknown_target_is_a_usage_error(tmp_path: Path) -> None:
    g = graph(write_project(tmp_path, chain(2)))
    with pytest.raises(UsageError, match="'nope'"):
        pending(g, "nope", ())


def test_x_arguments_tag_and_ini_section_reach_the_config(tmp_path: Path) -> None:
    ini = write_project(tmp_path, chain(1))
    text = ini.read_text().replace("[alembic]", "[tenant_db]")
    ini.write_text(text)
    cfg = load_config(ini, None, "tenant_db", ("tenant=acme", "dry"), "v2")
    assert cfg.config_ini_section == "tenant_db"
    assert cfg.get_main_option("script_location")
    assert cfg.cmd_opts is not None
    assert cfg.cmd_opts.x == ["tenant=acme", "dry"] and cfg.cmd_opts.tag == "v2"


def test_async_env_is_recognised(tmp_path: Path) -> None:
    a = open_script_directory(load_config(write_project(tmp_path / "a", chain(1), "async"), None))
    g = open_script_directory(load_config(write_project(tmp_path / "g", chain(1)), None))
    assert is_async_env(a) and not is_async_env(g)
