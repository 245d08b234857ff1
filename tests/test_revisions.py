"""The revision graph, loaded through Alembic with no database at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import ConfigError, GraphError, MultipleHeads, UsageError
from runner.revisions import RevisionGraph, load_config
from tests.support import Rev, chain, table_rev, write_project, write_revision


def graph(ini: Path) -> RevisionGraph:
    return RevisionGraph(load_config(ini, None))


def test_pending_lists_revisions_in_application_order(tmp_path: Path) -> None:
    g = graph(write_project(tmp_path, chain(3)))
    assert [p.revision for p in g.pending("head", ())] == ["r0000", "r0001", "r0002"]
    assert [p.revision for p in g.pending("head", ("r0000",))] == ["r0001", "r0002"]
    assert g.pending("head", ("r0002",)) == []


def test_multiple_heads_are_refused_naming_the_heads(tmp_path: Path) -> None:
    revs = [table_rev("a", None, "a"), table_rev("b1", "a", "b1"), table_rev("b2", "a", "b2")]
    g = graph(write_project(tmp_path, revs))
    with pytest.raises(MultipleHeads) as info:
        g.resolve_target("head")
    assert sorted(info.value.heads) == ["b1", "b2"]
    assert "b1" in info.value.reason and "b2" in info.value.reason


def test_duplicate_revision_ids_are_a_graph_error(tmp_path: Path) -> None:
    ini = write_project(tmp_path, chain(2))
    write_revision(tmp_path / "migrations" / "versions", table_rev("r0001", "r0000", "dup"), 7)
    with pytest.raises(GraphError, match="duplicate revision"):
        graph(ini)


def test_revision_with_syntax_error_names_the_file(tmp_path: Path) -> None:
    ini = write_project(tmp_path, [Rev("a", None, upgrade="def broken(:")])
    with pytest.raises(GraphError, match=r"0000_a\.py.*SyntaxError"):
        graph(ini)


def test_revision_with_import_error_is_a_graph_error(tmp_path: Path) -> None:
    ini = write_project(tmp_path, [Rev("a", None, header="import no_such_module_here")])
    with pytest.raises(GraphError, match="ModuleNotFoundError"):
        graph(ini)


def test_empty_script_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no revisions"):
        graph(write_project(tmp_path, []))


def test_missing_ini_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"alembic\.ini not found"):
        load_config(tmp_path / "alembic.ini", None)


def test_missing_script_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open the migration scripts"):
        RevisionGraph(load_config(tmp_path / "none.ini", str(tmp_path / "nowhere")))


def test_unknown_database_revision_is_detected(tmp_path: Path) -> None:
    g = graph(write_project(tmp_path, chain(2)))
    assert g.unknown(("r0001",)) == []
    assert g.unknown(("f00dcafe",)) == ["f00dcafe"]


def test_unknown_target_is_a_usage_error(tmp_path: Path) -> None:
    g = graph(write_project(tmp_path, chain(2)))
    with pytest.raises(UsageError, match="unknown revision"):
        g.resolve_target("nope")


def test_async_env_is_recognised(tmp_path: Path) -> None:
    assert graph(write_project(tmp_path / "a", chain(1), env_style="async")).is_async_env
    assert not graph(write_project(tmp_path / "g", chain(1))).is_async_env
