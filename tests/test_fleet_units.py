"""A fleet's parts that need no database: settings, the shard split, the exit-code policy,
the scheduler's canary and failure limit, and the summary every sink carries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner import redact
from runner.cancel import CancelToken
from runner.errors import (
    PERMANENT_EXIT_CODES,
    TRANSIENT_EXIT_CODES,
    ConfigError,
    fleet_exit_code,
)
from runner.fleet import (
    FleetOutcome,
    FleetTarget,
    TargetResult,
    database_label,
    schedule,
    shard_of,
    targets,
)
from runner.github import render_summary
from runner.report import FleetSummary, RunReport
from runner.settings import Secret, Settings, load_settings
from runner.termination import MAX_MESSAGE_BYTES, termination_message
from tests.support import run_cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import os

    for var in list(os.environ):
        if var.startswith("MIGRATION_") or var in ("JOB_COMPLETION_INDEX", "DATABASE_URL"):
            monkeypatch.delenv(var, raising=False)
    yield
    redact.forget_all()


# -- settings -------------------------------------------------------------------------------


def test_fleet_settings_default_to_one_target_and_no_fleet() -> None:
    s = load_settings()
    assert not s.fleet
    assert (s.tenants, s.tenants_file, s.tenants_query, s.database_urls_file) == (
        (),
        None,
        None,
        None,
    )
    assert (s.tenant_arg, s.parallel, s.max_failed, s.canary) == ("tenant", 4, 0, 0)
    assert (s.shard_count, s.shard_index) == (1, None)


def test_tenants_from_a_comma_list_or_a_file_blanks_comments_and_duplicates_dropped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MIGRATION_TENANTS", " acme, globex,,acme ")
    assert load_settings().tenants == ("acme", "globex")
    monkeypatch.delenv("MIGRATION_TENANTS")
    names = tmp_path / "tenants"
    names.write_text("# tenants\nacme\n\n  globex  \nacme\r\ninitech\n")
    monkeypatch.setenv("MIGRATION_TENANTS_FILE", str(names))
    s = load_settings()
    assert s.fleet and s.tenants == ("acme", "globex", "initech")


def test_an_empty_tenants_file_is_a_fleet_of_none_not_the_main_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    names = tmp_path / "tenants"
    names.write_text("# nobody yet\n")
    monkeypatch.setenv("MIGRATION_TENANTS_FILE", str(names))
    s = load_settings()
    assert s.fleet and s.tenants == ()
    assert targets(s, CancelToken()) == []


def test_a_fleet_whose_project_does_not_load_fails_once_with_every_target_unstarted(
    tmp_path: Path,
) -> None:
    result = run_cli(
        ["upgrade", "--config", str(tmp_path / "missing.ini")],
        "postgresql://u@127.0.0.1:1/x",
        MIGRATION_TENANTS="a,b,c",
    )
    assert result.returncode == 78, result.stderr
    assert not result.named("target_started")
    fleet = result.finished["fleet"]
    assert (fleet["not_started"], fleet["stopped"]) == (3, "project_not_loaded")


@pytest.mark.parametrize("bad", ['ac"me', "a b", "semi;colon", "quo'te", "tab\tbed"])
def test_a_tenant_name_that_env_py_could_not_quote_safely_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bad: str
) -> None:
    names = tmp_path / "tenants"
    names.write_text(f"ok\n{bad}\n")
    monkeypatch.setenv("MIGRATION_TENANTS_FILE", str(names))
    with pytest.raises(ConfigError, match="MIGRATION_TENANTS_FILE line 2"):
        load_settings()


def test_every_url_of_the_urls_file_is_masked_from_the_moment_it_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    urls = tmp_path / "urls"
    urls.write_text(
        "postgresql://a:first-s3cret@db1:5432/one\n# a comment\n\n"
        "postgresql://b:second%40s3cret@db2/two\r\n"
    )
    monkeypatch.setenv("MIGRATION_DATABASE_URLS_FILE", str(urls))
    s = load_settings()
    assert [u.get_secret_value().split("@")[-1] for u in s.database_urls] == [
        "db1:5432/one",
        "db2/two",
    ]
    text = "first-s3cret second%40s3cret second@s3cret"
    assert redact.redact(text) == "*** *** ***"
    assert "s3cret" not in repr(s)
    assert [t.name for t in targets(s, CancelToken())] == ["db1:5432/one", "db2/two"]


def test_two_sources_of_targets_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATION_TENANTS", "a")
    monkeypatch.setenv("MIGRATION_TENANTS_QUERY", "SELECT 1")
    with pytest.raises(ConfigError, match="choose one source of fleet targets"):
        load_settings()


def test_shard_index_comes_from_the_indexed_job_and_must_fit_the_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIGRATION_TENANTS", "a,b")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    assert load_settings().shard_count == 1, "an Indexed Job without shards is one shard"
    monkeypatch.setenv("MIGRATION_SHARD_COUNT", "3")
    assert load_settings().shard_index == 2
    monkeypatch.setenv("MIGRATION_SHARD_INDEX", "1")
    assert load_settings().shard_index == 1, "MIGRATION_SHARD_INDEX wins"
    monkeypatch.setenv("MIGRATION_SHARD_INDEX", "3")
    with pytest.raises(ConfigError, match="not below MIGRATION_SHARD_COUNT"):
        load_settings()
    monkeypatch.delenv("MIGRATION_SHARD_INDEX")
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    with pytest.raises(ConfigError, match="MIGRATION_SHARD_INDEX: needed"):
        load_settings()


def test_shards_without_a_fleet_and_nonsense_numbers_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIGRATION_SHARD_COUNT", "2")
    monkeypatch.setenv("MIGRATION_SHARD_INDEX", "0")
    with pytest.raises(ConfigError, match="shards split a fleet"):
        load_settings()
    monkeypatch.delenv("MIGRATION_SHARD_COUNT")
    for var, value in (("MIGRATION_PARALLEL", "0"), ("MIGRATION_CANARY", "-1")):
        monkeypatch.setenv(var, value)
        with pytest.raises(ConfigError, match=var):
            load_settings()
        monkeypatch.delenv(var)


def test_a_tenant_runs_with_its_x_argument_and_a_database_with_its_url() -> None:
    base = Settings(x_args=("verbose=1",), tenant_arg="customer")
    assert FleetTarget("acme").settings_for(base).x_args == ("verbose=1", "customer=acme")
    url = Secret("postgresql://u:pw@db9/app")
    assert FleetTarget("db9/app", url).settings_for(base).database_url == url
    assert database_label("postgresql://u:pw@db9:6432/app", 1) == "db9:6432/app"
    assert database_label("not a url", 7) == "url-7"


# -- shards ---------------------------------------------------------------------------------


@given(st.lists(st.text(min_size=1, max_size=30), unique=True, max_size=200), st.integers(1, 9))
def test_shards_split_the_fleet_exactly_once_whatever_its_order(
    names: list[str], count: int
) -> None:
    shards = [{n for n in names if shard_of(n, count) == i} for i in range(count)]
    assert set().union(*shards) == set(names)
    assert sum(len(s) for s in shards) == len(names)
    reordered = [{n for n in reversed(names) if shard_of(n, count) == i} for i in range(count)]
    assert reordered == shards


def test_a_tenant_keeps_its_shard_when_tenants_are_added() -> None:
    before = {f"t{i}": shard_of(f"t{i}", 4) for i in range(500)}
    after = {f"t{i}": shard_of(f"t{i}", 4) for i in range(1000)}
    assert all(after[name] == shard for name, shard in before.items())
    sizes = [list(after.values()).count(i) for i in range(4)]
    assert min(sizes) > 200, f"shards roughly even: {sizes}"


# -- the exit code --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codes", "behind", "expected"),
    [
        ([], False, 0),
        ([], True, 3),
        ([69, 69], False, 69),
        ([69, 75], False, 75),
        ([69, 75, 143], True, 75),
        ([70], False, 70),
        ([70, 69], False, 70),
        ([78, 75], False, 78),
        ([65, 77], False, 70),
        ([1], False, 1),
    ],
)
def test_fleet_exit_code_is_transient_only_when_every_failure_is(
    codes: list[int], behind: bool, expected: int
) -> None:
    code = fleet_exit_code(codes, behind)
    assert code == expected
    if codes:
        assert (code in TRANSIENT_EXIT_CODES) == (set(codes) <= TRANSIENT_EXIT_CODES)
        if set(codes) & PERMANENT_EXIT_CODES:
            assert code in PERMANENT_EXIT_CODES, "the chart fails the index at once"


# -- scheduling -----------------------------------------------------------------------------


class Slots:
    """An executor with `size` slots whose targets finish in submission order, failing the
    ones named in `failing`; it records what was running when each target was handed out."""

    def __init__(self, size: int, failing: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.size, self.failing = size, failing
        self.running: list[str] = []
        self.log: list[tuple[str, tuple[str, ...]]] = []

    @property
    def busy(self) -> int:
        return len(self.running)

    @property
    def broken(self) -> bool:
        return False

    def free(self) -> bool:
        return len(self.running) < self.size

    def submit(self, target: FleetTarget) -> None:
        self.log.append((target.name, tuple(self.running)))
        self.running.append(target.name)

    def next_result(self) -> TargetResult | None:
        name = self.running.pop(0)
        failed = name in self.failing
        return TargetResult(name, 70 if failed else 0, "migration_failed" if failed else "success")

    def close(self) -> None:
        return None


def run_schedule(
    executor: Slots, n: int, **settings: int
) -> tuple[list[str], list[str], FleetOutcome]:
    done: list[str] = []
    skipped: list[str] = []
    outcome = schedule(
        [FleetTarget(f"t{i}") for i in range(n)],
        executor,
        Settings(**settings),  # type: ignore[arg-type]
        CancelToken(),
        lambda r: done.append(r.target),
        lambda t: skipped.append(t.name),
    )
    return done, skipped, outcome


def test_the_canary_finishes_alone_before_the_rest_starts() -> None:
    slots = Slots(4)
    done, skipped, outcome = run_schedule(slots, 10, canary=2)
    assert done == [f"t{i}" for i in range(10)] and not skipped
    started_with = dict(slots.log)
    assert started_with["t2"] == (), "nothing else starts while a canary runs"
    assert started_with["t1"] == ("t0",)
    assert outcome.exit_code == 0


def test_a_failed_canary_starts_nothing_more() -> None:
    done, skipped, outcome = run_schedule(Slots(4, {"t1"}), 10, canary=3)
    assert done == ["t0", "t1", "t2"]
    assert skipped == [f"t{i}" for i in range(3, 10)]
    assert (outcome.stopped, outcome.exit_code) == ("canary_failed", 70)


def test_max_failed_starts_nothing_after_the_limit_and_never_exits_0() -> None:
    done, skipped, outcome = run_schedule(Slots(1, {"t0", "t2", "t3"}), 8, max_failed=2)
    assert done == ["t0", "t1", "t2"] and skipped == ["t3", "t4", "t5", "t6", "t7"]
    assert (outcome.stopped, outcome.failed, outcome.exit_code) == ("max_failed", 2, 70)
    done, skipped, outcome = run_schedule(Slots(2, {"t0", "t5"}), 8)
    assert len(done) == 8 and not skipped and outcome.exit_code == 70


def test_a_cancelled_run_starts_nothing_and_exits_with_the_signal() -> None:
    cancel = CancelToken()
    cancel.cancel("SIGTERM", 143)
    skipped: list[str] = []
    outcome = schedule(
        [FleetTarget("a"), FleetTarget("b")],
        Slots(2),
        Settings(),
        cancel,
        print,
        lambda t: skipped.append(t.name),
    )
    assert skipped == ["a", "b"] and outcome.exit_code == 143 and outcome.stopped == "interrupted"


# -- the summary every sink carries ---------------------------------------------------------


def big_fleet_report() -> RunReport:
    summary = FleetSummary(shard="3/8")
    for i in range(10_000):
        failed = i % 7 == 0
        summary.add(
            f"tenant_{'x' * 200}_{i}",
            "migration_failed" if failed else "success",
            70 if failed else 0,
            0 if failed else 3,
            i,
            ("revision r0001 failed: " + "y" * 500) if failed else None,
        )
    summary.skipped(5, "max_failed")
    report = RunReport("upgrade", exit_code=70, outcome="targets_failed", fleet=summary)
    report.reason = "1429 of 10005 targets failed; first failure: " + "z" * 5000
    return report


def test_the_fleet_summary_stays_small_whatever_the_fleet() -> None:
    summary = big_fleet_report().summary()
    fleet = summary["fleet"]
    assert fleet["targets"] == 10_005 and fleet["failed"] == 1429 and fleet["not_started"] == 5
    assert len(fleet["failed_targets"]) == 5 and len(fleet["slowest"]) == 5
    assert fleet["slowest"][0]["duration_ms"] == 9999
    assert summary["applied"] == 3 * (10_000 - 1429)
    assert fleet["by_outcome"] == {"migration_failed": 1429, "success": 8571}
    assert len(json.dumps(fleet)) < 4096


def test_the_termination_message_of_a_huge_fleet_fits_the_kubelets_limit() -> None:
    message = termination_message(big_fleet_report().summary())
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    parsed = json.loads(message)
    assert parsed["exit_code"] == 70 and parsed["fleet"]["failed"] == 1429


def test_the_step_summary_shows_the_fleet_its_failures_and_slowest_targets() -> None:
    markdown = render_summary(big_fleet_report())
    assert "| Targets | 10005 (shard 3/8) |" in markdown
    assert "| migration_failed | 1429 |" in markdown
    assert "| Applied | 25713 |" in markdown
    assert "| Not started | 5 (max_failed) |" in markdown
    assert markdown.count("| `tenant_") == 10  # 5 failed, 5 slowest
    assert "1424 more" in markdown
    assert "Revision |" not in markdown
