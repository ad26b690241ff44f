"""7. Cluster mode (issue 13): two daemons on one private PostgreSQL against one on SQLite.

The PostgreSQL server is the test suite's (``tests/pg_server.py``: Debian's
PostgreSQL 15 in a temporary folder, run as the ``postgres`` user when we are root,
fsync off), started with ``pg_stat_statements`` loaded so that statements per publish
are counted, not guessed. Where it cannot run the benchmark is recorded as skipped with
the reason, except under ``CI=true``. Nodes A and B are real ``twistd -n jmappushd``
processes on that database (``[storage] backend = postgresql``, default pool size);
the single node is the same daemon on SQLite, running at the same time, so every
comparison is made side by side, in alternating slices:

* Publish path: ``load_publish`` sends ``rounds`` rounds over every prepared account,
  ``batch`` accounts per publish, to the SQLite node or to A, in turns. CPU per change
  is the daemon's (``/proc``) plus, in PostgreSQL mode, every process of the
  PostgreSQL server (postmaster and its backends); node B's CPU for reading the same
  changes is given apart. Each run ends when one EventSource client watching the last
  account, on the single node or on B, has seen ``final``: so B has read everything.
* Remote delivery: one EventSource client on each of the single node, A and B; a
  publish on A (or the single node) in turns; p50/p99 of publish -> event.
* Fan-out: N listeners (half EventSource, half WebSocket, one user) on the single
  node, or N/2 on each of A and B; rounds alternate between the two setups.
* Capacity: the single node holds ``capacity`` EventSource plus ``capacity`` WebSocket
  connections; then A and B hold as many each (twice in all), from several
  load-generator processes (each under its own descriptor limit).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import bench_capacity, bench_fanout, bench_throughput
from benchmarks.common import (
    PYTHON,
    ROOT,
    Child,
    cpu_ns,
    expect_all,
    idle_cpu,
    open_fds,
    pause,
    percentiles,
    rss_kib,
    split,
    stop_all,
)
from benchmarks.context import Context
from benchmarks.server import Daemon, client_processes, wait_ready

if TYPE_CHECKING:
    import psycopg

    from tests.pg_server import PgServer

FULL: dict[str, Any] = {
    "accounts": 2_000, "rounds": 20, "batches": [100, 1_000], "repeats": 2,
    "remote_rounds": 100, "fanout": [1_000, 10_000], "fanout_rounds": {1_000: 20, 10_000: 10},
    "capacity": 9_600, "idle_window": 10.0,
}
SMOKE: dict[str, Any] = {
    "accounts": 40, "rounds": 2, "batches": [10], "repeats": 1, "remote_rounds": 3,
    "fanout": [20], "fanout_rounds": {20: 2}, "capacity": 20, "idle_window": 1.0,
}
SECTIONS = {
    "event-source": "event-source-throttle = 0\nmax-connections-per-user = 20000",
    "websocket": "ws-throttle = 0\nmax-connections-per-user = 20000",
}
TARGET_RSS, TARGET_P99, TARGET_CPU = 1.2, 1.5, 1.5
ES_LAST = "/jmap/eventsource/?types=*&closeafter=no&ping=30"


def sizes(ctx: Context) -> dict[str, Any]:
    return SMOKE if ctx.smoke else FULL


def accounts_needed(ctx: Context) -> int:
    """Users the shared (SQLite) state directory must hold for this benchmark."""
    return int(sizes(ctx)["accounts"])


def pg_unavailable() -> str | None:
    try:
        from tests.pg_server import pg_missing
    except ImportError as exc:  # the benchmarks run from a checkout: tests/ is there
        return f"tests.pg_server cannot be imported ({exc})"
    return pg_missing()


def skipped(reason: str) -> dict[str, Any]:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"PostgreSQL is required under CI=true: {reason}")
    return {"skipped": f"PostgreSQL not available: {reason}", "targets": {}}


class Database:
    """The private server, one database for the cluster, and what it has done so far."""

    def __init__(self, ctx: Context) -> None:
        from tests.pg_server import ROLE_PASSWORD, PgServer

        self.server: PgServer = PgServer(options="-c shared_preload_libraries=pg_stat_statements"
                                         " -c pg_stat_statements.track=all")
        self.server.init()
        self.dbname = self.server.new_database()
        with self.server.connect(self.dbname) as connection:
            connection.execute(b"CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.password_file = ctx.workdir / "pg.password"
        self.password_file.write_text(ROLE_PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self._stats: psycopg.Connection[tuple[Any, ...]] = self.server.connect(self.dbname)

    def storage(self) -> str:
        return (f"backend = postgresql\ndsn = {self.server.tcp_dsn(self.dbname)}\n"
                f"password-file = {self.password_file}")

    def postmaster(self) -> int:
        return int((self.server.data / "postmaster.pid").read_text().split()[0])

    def cpu(self) -> dict[str, float]:
        """CPU seconds of the postmaster and every process it started, by kind: client
        backends (the nodes' connections), autovacuum, and the rest (WAL writer,
        checkpointer, background writer, the postmaster)."""
        from tests.pg_server import ROLE

        root = self.postmaster()
        out = {"backends": 0.0, "autovacuum": 0.0, "other": cpu_ns(root) / 1e9}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) != root:
                    continue
                title = Path(f"/proc/{name}/cmdline").read_bytes().decode(errors="replace")
                used = cpu_ns(int(name)) / 1e9
            except OSError:
                continue  # a process that has just ended
            kind = ("backends" if title.startswith(f"postgres: {ROLE} ") else
                    "autovacuum" if "autovacuum" in title else "other")
            out[kind] += used
        return out

    def folded(self, timeout: float = 60.0) -> float:
        """Wait until the fold mark reaches the log's top: a publish's ``states`` write is
        folded after its commit and belongs to its cost. Returns the seconds waited."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            row = self._stats.execute(
                "SELECT f.folded >= c.seq /* the bench's poll, uncounted: pg_stat */ "
                "FROM change_fold f, change_seq c").fetchone()
            if row is not None and row[0]:
                return time.monotonic() - began
            time.sleep(0.02)
        raise RuntimeError(f"the fold mark did not reach the log's top in {timeout:.0f} s")

    def counters(self) -> dict[str, int]:
        """Statements and rows of the cluster's database so far, from pg_stat_statements
        (immediate; pg_stat_database's commit counts lag by up to 10 s). The benchmark's
        own reads of these views are left out by their text."""
        calls = self._stats.execute(
            "SELECT coalesce(sum(calls), 0), coalesce(sum(rows), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s "
            "AND s.query NOT LIKE '%%pg_stat%%'", (self.dbname,)).fetchone()
        assert calls is not None
        return {"statements": int(calls[0]), "rows": int(calls[1])}

    def statements(self, top: int = 12) -> list[list[Any]]:
        """The busiest statement texts (calls, rows) since the last reset."""
        rows = self._stats.execute(
            "SELECT calls, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) "
            "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = %s AND s.query NOT LIKE '%%pg_stat%%' "
            "ORDER BY calls DESC LIMIT %s", (self.dbname, top)).fetchall()
        return [[int(c), int(r), str(q)] for c, r, q in rows]

    def reset_statements(self) -> None:
        self._stats.execute("SELECT pg_stat_statements_reset()")

    def connections(self) -> int:
        row = self._stats.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                  "AND pid <> pg_backend_pid()", (self.dbname,)).fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        self._stats.close()
        self.server.destroy()


def make_users(ctx: Context, config: Path, count: int, prefix: str) -> list[dict[str, str]]:
    out = ctx.workdir / f"cluster-{prefix}.json"
    subprocess.run([PYTHON, "-m", "benchmarks.setup_users", "--config", str(config),
                    "--count", str(count), "--prefix", prefix, "--out", str(out)],
                   check=True, cwd=ROOT, timeout=900)
    users: list[dict[str, str]] = json.loads(out.read_text())
    return users


class Setup:
    """The single SQLite node and the two PostgreSQL nodes, with their users."""

    def __init__(self, ctx: Context, db: Database) -> None:
        self.ctx = ctx
        self._storage = {"storage": db.storage()}
        self.single, self.nodes = self._daemons()
        n = sizes(ctx)["accounts"]
        self.single_users = ctx.users(n)
        self.pg_users = make_users(ctx, self.nodes[0].config_path, n, "cbench")
        self.pg_fan = make_users(ctx, self.nodes[0].config_path, 1, "cfan")[0]
        self.files: dict[str, str] = {}
        for tag, users in (("single", self.single_users), ("pg", self.pg_users)):
            path = ctx.workdir / f"cluster-accounts-{tag}.json"
            path.write_text(json.dumps([u["account"] for u in users]))
            self.files[tag] = str(path)
            self.files[f"{tag}-last"] = ctx.auth_file(users[-1:], f"cluster-last-{tag}")
        self.files["single-fan"] = ctx.fan_auth_file()
        fan = ctx.workdir / "cluster-fan-auth.txt"
        fan.write_text(f"Bearer {self.pg_fan['token']}\n")
        self.files["pg-fan"] = str(fan)

    def _daemons(self) -> tuple[Daemon, list[Daemon]]:
        ctx = self.ctx
        single = Daemon(ctx.workdir, ctx.state_dir, SECTIONS, tag="cluster-single")
        nodes = [Daemon(ctx.workdir, ctx.workdir / f"cluster-{n}-state",
                        SECTIONS | self._storage, tag=f"cluster-{n}") for n in ("a", "b")]
        return single, nodes

    def renew(self) -> None:
        """Stop the three daemons and make new ones (new ports, the same state), unstarted."""
        self.stop([d for d in (self.single, *self.nodes) if d.proc.process is not None])
        self.single, self.nodes = self._daemons()

    def start(self, which: Sequence[Daemon]) -> None:
        for daemon in which:
            daemon.start()

    def stop(self, which: Sequence[Daemon]) -> None:
        for daemon in which:
            daemon.stop()


def _publish_run(setup: Setup, db: Database, mode: str, watcher: Child, batch: int,
                 rounds: int) -> dict[str, Any]:
    single = mode == "sqlite"
    target = setup.single if single else setup.nodes[0]
    reader = setup.nodes[1]
    watcher.send(cmd="reset")
    watcher.expect("reset", 60)
    cpu0, b0 = cpu_ns(target.pid), cpu_ns(reader.pid)
    s0, c0 = ({}, {}) if single else (db.cpu(), db.counters())
    sent = bench_throughput.publish(target, setup.files["single" if single else "pg"], batch,
                                    rounds)
    watcher.expect("final", 120)
    # In PostgreSQL mode the run lasts until the fold mark reaches the log's top: the
    # fold of the run's states (up to a second after the last publish, with whatever
    # the node does meanwhile) is part of its cost.
    folding = 0.0 if single else db.folded()
    changes = sent["publishes"] * batch
    out: dict[str, Any] = {"mode": mode, "batch": batch, "changes": changes,
                           "fold_wait_s": round(folding, 3),
                           "publishes": sent["publishes"], "errors": sent["errors"],
                           "ack_p50_ms": sent["ack_p50_ms"], "ack_p99_ms": sent["ack_p99_ms"],
                           "daemon_us": (cpu_ns(target.pid) - cpu0) / changes / 1e3}
    if not single:
        counters = db.counters()
        delta = {k: counters[k] - c0[k] for k in counters}
        s1 = db.cpu()
        kinds = {k: (s1[k] - s0[k]) / changes * 1e6 for k in s1}
        out |= {"server_us": sum(kinds.values()), "server_us_by_kind": kinds,
                "reader_us": (cpu_ns(reader.pid) - b0) / changes / 1e3,
                "per_publish": {k: v / sent["publishes"] for k, v in delta.items()}}
    out["total_us"] = out["daemon_us"] + out.get("server_us", 0.0)
    return out


def publish_path(setup: Setup, db: Database) -> dict[str, Any]:
    """Alternating slices: per batch size, SQLite then PostgreSQL (then the other way)."""
    s = sizes(setup.ctx)
    watchers = {
        "sqlite": client_processes(setup.single, "es", [1], auth_file=setup.files["single-last"],
                                   src_base=2, max_seconds=setup.ctx.max_seconds)[0],
        "postgresql": client_processes(setup.nodes[1], "es", [1],
                                       auth_file=setup.files["pg-last"], src_base=3,
                                       max_seconds=setup.ctx.max_seconds)[0]}
    runs: list[dict[str, Any]] = []
    try:
        wait_ready(list(watchers.values()), setup.ctx.connect_timeout)
        for mode, watcher in watchers.items():  # warm-up, not counted
            _publish_run(setup, db, mode, watcher, s["batches"][0], 1)
        db.reset_statements()
        for repeat in range(s["repeats"]):
            order = list(watchers) if repeat % 2 == 0 else list(reversed(watchers))
            for batch in s["batches"]:
                for mode in order:
                    run = _publish_run(setup, db, mode, watchers[mode], batch, s["rounds"])
                    runs.append(run | {"repeat": repeat})
        statements = db.statements()
    finally:
        stop_all(watchers.values())
    return {"runs": runs, "summary": _publish_summary(runs, s["batches"]),
            "statements": statements}


def _publish_summary(runs: list[dict[str, Any]], batches: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for batch in batches:
        mine = [r for r in runs if r["batch"] == batch]
        ratios = [p["total_us"] / q["total_us"] if q["total_us"] > 0 else None
                  for p, q in zip([r for r in mine if r["mode"] == "postgresql"],
                                  [r for r in mine if r["mode"] == "sqlite"], strict=True)]
        pg = [r for r in mine if r["mode"] == "postgresql"]
        out[str(batch)] = {
            "ratios": ratios,
            "worst_ratio": None if None in ratios else max(r for r in ratios if r is not None),
            "sqlite_us": [r["total_us"] for r in mine if r["mode"] == "sqlite"],
            "pg_daemon_us": [r["daemon_us"] for r in pg],
            "pg_server_us": [r["server_us"] for r in pg],
            "pg_server_us_by_kind": [r["server_us_by_kind"] for r in pg],
            "pg_reader_us": [r["reader_us"] for r in pg],
            "per_publish": pg[-1]["per_publish"],
        }
    return out


def _alternate(groups: list[tuple[Daemon, list[Child], str]], rounds: int, first: int
               ) -> list[list[tuple[str, int, int]]]:
    """One publish per group per round, in turns; each waits until its clients got it."""
    publishers = [daemon.publisher() for daemon, _, _ in groups]
    sent: list[list[tuple[str, int, int]]] = [[] for _ in groups]
    try:
        for r in range(first, first + rounds):
            for i, ((_, children, account), publisher) in enumerate(
                    zip(groups, publishers, strict=True)):
                mark = f"g{i}r{r}"
                sent[i].append(publisher.publish({account: {"Email": mark}}))
                expect_all(children, "done", 60)
                pause(bench_fanout.GAP_S)
    finally:
        for publisher in publishers:
            publisher.close()
    return sent


def _reports(children: list[Child]) -> list[dict[str, Any]]:
    for child in children:
        child.send(cmd="report")
    return expect_all(children, "report", 120)


def _spread(daemons: Sequence[Daemon], n: int, auth: str, src: int, ctx: Context,
            kinds: Sequence[str] = ("es", "ws")) -> tuple[list[list[Child]], int]:
    """``n`` listeners spread evenly over ``daemons`` and ``kinds``; one list per daemon."""
    out: list[list[Child]] = []
    per = split(n, len(daemons) * len(kinds))
    k = 0
    for daemon in daemons:
        group: list[Child] = []
        for kind in kinds:
            procs = 2 if per[k] >= 2_000 else 1
            group += client_processes(daemon, kind, split(per[k], procs), auth_file=auth,
                                      src_base=src, announce=True, max_seconds=ctx.max_seconds)
            src += procs
            k += 1
        out.append(group)
    return out, src


def deliveries(setup: Setup, n: int, rounds: int, kinds: Sequence[str] = ("es", "ws")
               ) -> dict[str, Any]:
    """Single node with n listeners and A+B with n/2 each; publishes alternate between them
    (on the single node and on A). Latencies overall and per node."""
    ctx = setup.ctx
    single, src = _spread([setup.single], n, setup.files["single-fan"], 2, ctx, kinds)
    cluster, _ = _spread(setup.nodes, n, setup.files["pg-fan"], src, ctx, kinds)
    everyone = single[0] + cluster[0] + cluster[1]
    try:
        connect = wait_ready(everyone, ctx.connect_timeout)
        groups = [(setup.single, single[0], ctx.fan_account),
                  (setup.nodes[0], cluster[0] + cluster[1], setup.pg_fan["account"])]
        _alternate(groups, bench_fanout.WARMUP_ROUNDS, 0)
        _reports(everyone)  # drop the warm-up receipts
        sent = _alternate(groups, rounds, bench_fanout.WARMUP_ROUNDS)
        single_reports = _reports(single[0])
        a_reports, b_reports = _reports(cluster[0]), _reports(cluster[1])
    finally:
        stop_all(everyone)
    out = {"n": n, "rounds": rounds, "connect": connect,
           "single": bench_fanout._latencies(sent[0], single_reports),
           "cluster": bench_fanout._latencies(sent[1], a_reports + b_reports),
           "cluster_on_a": _node_latencies(sent[1], a_reports),
           "cluster_on_b": _node_latencies(sent[1], b_reports)}
    out["p99_ratio"] = (out["cluster"]["latency_ms"]["p99"]
                        / max(1e-9, out["single"]["latency_ms"]["p99"]))
    return out


def _node_latencies(sent: list[tuple[str, int, int]], reports: list[dict[str, Any]]
                    ) -> dict[str, float]:
    samples = [t - t0 for mark, t0, _ in sent for r in reports for t in r["tokens"].get(mark, [])]
    return percentiles(samples)


def _hold(daemons: Sequence[Daemon], ctx: Context, n: int, auth: str, src: int
          ) -> tuple[dict[str, Any], list[Child], int]:
    """n EventSource then n WebSocket connections on each daemon; RSS per kind per daemon."""
    procs = ctx.client_procs
    children: list[Child] = []
    result: dict[str, Any] = {}
    for daemon in daemons:
        bench_capacity.warm_up(daemon, ctx, auth)
    pause(ctx.settle)
    before = {d.config_path.stem: rss_kib(d.pid) for d in daemons}
    rss: dict[str, dict[str, int]] = {k: {"start": v} for k, v in before.items()}
    opened: dict[str, dict[str, int]] = {k: {} for k in before}
    for kind in ("es", "ws"):
        for daemon in daemons:
            key = daemon.config_path.stem
            group = client_processes(daemon, kind, split(n, procs), auth_file=auth,
                                     src_base=src, max_seconds=ctx.max_seconds)
            src += procs
            children += group
            ready = wait_ready(group, ctx.connect_timeout)
            opened[key][kind] = ready["opened"]
            result.setdefault("failed", {})[f"{key}-{kind}"] = ready["failed"]
        pause(ctx.settle)
        for daemon in daemons:
            key = daemon.config_path.stem
            rss[key][kind] = rss_kib(daemon.pid)
    for daemon in daemons:
        key = daemon.config_path.stem
        r, o = rss[key], opened[key]
        result[daemon.config_path.stem] = {
            "rss_start": r["start"], "rss_after_es": r["es"], "rss_after_ws": r["ws"],
            "es_kib_per_conn": (r["es"] - r["start"]) / max(1, o["es"]),
            "ws_kib_per_conn": (r["ws"] - r["es"]) / max(1, o["ws"]),
            "kib_per_conn": (r["ws"] - r["start"]) / max(1, o["es"] + o["ws"]),
            "fds": open_fds(daemon.pid), "opened": o}
    return result, children, src


def capacity(setup: Setup, db: Database) -> dict[str, Any]:
    ctx, n = setup.ctx, sizes(setup.ctx)["capacity"]
    window = sizes(ctx)["idle_window"]
    out: dict[str, Any] = {"n_per_kind_per_node": n}
    # Fresh processes: a heap that held the fan-out's listeners would absorb new ones.
    setup.renew()
    setup.start([setup.single])
    single, children, src = _hold([setup.single], ctx, n, setup.files["single-fan"], 2)
    try:
        single["idle_cpu"] = idle_cpu(setup.single.pid, window)
        single["held"] = _held(children)
    finally:
        stop_all(children)
    out["single"] = single
    setup.stop([setup.single])
    setup.start(setup.nodes)
    cluster, children, _ = _hold(setup.nodes, ctx, n, setup.files["pg-fan"], src)
    try:
        db.reset_statements()
        c0, started = db.counters(), time.monotonic()
        cluster["idle_cpu"] = {d.config_path.stem: idle_cpu(d.pid, window / 2)
                               for d in setup.nodes}
        seconds = time.monotonic() - started
        c1 = db.counters()
        cluster["idle_db_per_s"] = {k: (c1[k] - c0[k]) / seconds for k in c1}
        cluster["idle_statements"] = db.statements(6)
        cluster["db_connections"] = db.connections()
        cluster["held"] = _held(children)
    finally:
        stop_all(children)
    out["cluster"] = cluster
    base = single["cluster-single"]["kib_per_conn"]
    out["rss_ratio"] = {k: cluster[k]["kib_per_conn"] / base if base > 0 else None
                        for k in ("cluster-a", "cluster-b")}
    return out


def _held(children: list[Child]) -> dict[str, int]:
    for child in children:
        child.send(cmd="counters")
    counters = expect_all(children, "counters", 60)
    return {"open": sum(c["open"] for c in counters),
            "dropped": sum(c["closed_after_open"] for c in counters)}


def _phase(out: dict[str, Any], name: str, work: Callable[[], dict[str, Any]]) -> None:
    started = time.monotonic()
    out[name] = work()
    out[name]["wall_seconds"] = round(time.monotonic() - started, 1)


def run(ctx: Context) -> dict[str, Any]:
    reason = pg_unavailable()
    if reason is not None:
        return skipped(reason)
    s = sizes(ctx)
    db = Database(ctx)
    out: dict[str, Any] = {"sizes": s, "postgresql": _pg_version(db)}
    try:
        setup = Setup(ctx, db)
        setup.start([setup.single, *setup.nodes])
        try:
            out["db_connections_idle"] = db.connections()
            _phase(out, "publish", lambda: publish_path(setup, db))
            _phase(out, "remote", lambda: deliveries(setup, 2, s["remote_rounds"], ("es",)))
            out["fanout"] = {}
            for n in s["fanout"]:
                out["fanout"][str(n)] = deliveries(setup, n, s["fanout_rounds"][n])
            _phase(out, "capacity", lambda: capacity(setup, db))
        finally:
            setup.stop([d for d in (setup.single, *setup.nodes) if d.proc.process is not None])
    finally:
        db.close()
    out["targets"] = _targets(out, ctx)
    return out


def _targets(out: dict[str, Any], ctx: Context) -> dict[str, bool]:
    targets: dict[str, bool] = {}
    cap = out["capacity"]
    held = cap["cluster"]["held"]
    want = 4 * sizes(ctx)["capacity"]
    targets[f"{want}_held_on_two_nodes"] = held["open"] >= want and held["dropped"] == 0
    targets["rss_per_conn<=1.2x_single"] = all(
        r is not None and r <= TARGET_RSS for r in cap["rss_ratio"].values())
    for n, f in out["fanout"].items():
        targets[f"fanout_p99<=1.5x@{n}"] = f["p99_ratio"] <= TARGET_P99
    for batch, p in out["publish"]["summary"].items():
        worst = p["worst_ratio"]
        targets[f"cpu_per_change<=1.5x@batch{batch}"] = worst is not None and worst <= TARGET_CPU
    return targets


def _pg_version(db: Database) -> str:
    with db.server.connect() as connection:
        row = connection.execute(b"SHOW server_version").fetchone()
    return str(row[0]) if row else ""
