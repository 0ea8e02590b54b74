#!/usr/bin/env python3
"""
test_redis_sessions.py - no state leaks between the clients of a pooled
Redis connection: databases, transactions, watches, subscriptions, blocking
commands, authentication, client names, RESET, refused commands, and real
clients (redis-py, hiredis, redis-cli) with their own connect handshakes.

Every daemon here (but the one of the CLIENT ID test, which needs two
workers) runs one worker with a small pool (a few server connections for
many clients), so clients really do share connections; each
test checks the server's own view (CLIENT LIST, the keys of each database)
as well as the replies, so a proxy that leaks state fails it.
"""

import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools("redis-server", "redis-cli")

CTL = os.path.join(os.path.dirname(h.SIDEPOOL_BIN), "sidepoolctl")
SMALL_POOL = {"size": 2, "max_connections": 3, "idle_timeout": "60s"}
ONE_CONN = {"size": 1, "max_connections": 1, "idle_timeout": "60s"}

NOAUTH = "NOAUTH Authentication required."
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."


# ---------------------------------------------------------------- helpers

def start(r, pool=None, request_timeout="5s", **upstream):
    """sidepool (1 worker, TCP listener 0, unix listener 1, a control
    socket) in front of redis r; upstream: extra upstream keys."""
    cfg = h.redis_config([r], listen=[h.AUTO_TCP, h.AUTO_UNIX], workers=1,
                         pool=pool or SMALL_POOL, request_timeout=request_timeout,
                         upstream_extra=upstream)
    sp = h.Sidepool(cfg, start=False)
    sp.config_src["control"] = {"path": os.path.join(sp.tmp, "control.sock")}
    sp.start()
    return sp


def ctl(sp, *args):
    p = subprocess.run([CTL, "-s", sp.config_src["control"]["path"]] + list(args),
                       capture_output=True, timeout=h.scale(10))
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def ctl_json(sp, cmd):
    code, out, err = ctl(sp, "--json", cmd)
    assert out.strip(), "sidepoolctl --json %s: exit %d, no output (%s)" % (cmd, code, err)
    return json.loads(out)


def pool_row(sp):
    pools = ctl_json(sp, "pools")["pools"]
    assert len(pools) == 1, pools
    return pools[0]


def wait_dedicated(sp, n, what=""):
    """Poll sidepoolctl pools until exactly n connections are dedicated."""
    last = {}

    def check():
        last["row"] = pool_row(sp)
        return last["row"]["dedicated"] == n

    try:
        h.poll_until(check, h.scale(5), what="%d dedicated connection(s) %s" % (n, what))
    except AssertionError as e:
        raise AssertionError("%s; last pools row: %r" % (e, last.get("row"))) from None


def direct(r, db=0, auth=None):
    """A connection to redis itself (not through sidepool)."""
    c = r.client()
    if auth:
        expect(c.call("AUTH", *auth), "OK", "AUTH on a direct connection")
    if db:
        expect(c.call("SELECT", db), "OK", "SELECT on a direct connection")
    return c


def client_list(r, auth=None):
    """The server's CLIENT LIST as dicts, without the asking connection."""
    with direct(r, auth=auth) as c:
        me = c.call("CLIENT", "ID")
        text = c.call("CLIENT", "LIST")
    assert isinstance(text, bytes), "CLIENT LIST: %r" % (text,)
    rows = []
    for line in text.decode().splitlines():
        d = dict(f.partition("=")[::2] for f in line.strip().split(" ") if f)
        if d.get("id") != str(me):
            rows.append(d)
    return rows


def poll_clients(r, pred, what, auth=None, timeout=5.0):
    """Poll redis's CLIENT LIST until pred(rows) holds; say what was seen."""
    seen = {}

    def check():
        seen["rows"] = client_list(r, auth)
        return pred(seen["rows"])

    try:
        h.poll_until(check, h.scale(timeout), what=what)
    except AssertionError as e:
        rows = [" ".join("%s=%s" % (k, v) for k, v in row.items()
                         if k in ("id", "addr", "name", "db", "flags", "sub", "psub",
                                  "multi", "cmd", "user"))
                for row in seen.get("rows", [])]
        raise AssertionError("%s; redis CLIENT LIST:\n  %s" % (e, "\n  ".join(rows))) from None
    return seen["rows"]


def no_transaction(rows):
    return all("x" not in row.get("flags", "") and row.get("multi", "-1") == "-1"
               for row in rows)


def no_subscription(rows):
    return all(row.get("sub", "0") == "0" and row.get("psub", "0") == "0" and
               row.get("ssub", "0") == "0" for row in rows)


def not_blocked(rows):
    return all("b" not in row.get("flags", "") for row in rows)


def blocked(rows):
    return any("b" in row.get("flags", "") for row in rows)


def raw_call(c, *args, timeout=None):
    """Send one command; return (the reply, its exact bytes)."""
    c.send(h.encode(*args))
    start_pos = c.reader.pos
    v = c.read_reply(timeout)
    assert c.reader.pos >= start_pos, "reader compacted: cannot show the raw bytes"
    return v, bytes(c.reader.buf[start_pos:c.reader.pos])


def expect(reply, want, what=""):
    assert reply == want, "%s: expected %r, got %r" % (what, want, reply)


def expect_error(reply, want, what=""):
    assert isinstance(reply, h.Error) and reply == want, \
        "%s: expected the error %r, got %r" % (what, want, reply)


def mentions(reply, *words):
    text = str(reply).lower()
    return all(w.lower() in text for w in words)


def commandstat_calls(r, name):
    with direct(r) as c:
        info = c.call("INFO", "commandstats").decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_%s:" % name):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


# ---------------------------------------------------------------- 1. databases

@h.test("SELECT: A in db 1 and B in db 0 interleaved on one pooled connection each see "
        "only their own keys")
def select_interleaved_on_one_connection():
    r = h.RedisServer()
    sp = start(r, pool=ONE_CONN)
    a, b = sp.client(0), sp.client(1)
    expect(a.call("SELECT", "1"), "OK", "A: SELECT 1")
    rounds, per = 20, 5
    # Alternate small pipelined batches from A and B without reading in
    # between: the server sees them interleaved on its single connection.
    for rnd in range(rounds):
        for c, tag in ((a, "A"), (b, "B")):
            cmds = []
            for i in range(per):
                k = "k:%d" % (rnd * per + i)
                cmds += [("SET", k, "%s-%s" % (tag, k)), ("GET", k)]
            c.send(h.encode_many(cmds))
    for c, tag in ((a, "A"), (b, "B")):
        got = c.read_replies(rounds * per * 2, timeout=10)
        for n in range(rounds * per):
            k = "k:%d" % n
            expect(got[2 * n], "OK", "%s: SET %s" % (tag, k))
            expect(got[2 * n + 1], ("%s-%s" % (tag, k)).encode(),
                   "%s: GET %s right after its SET (a value from the other db means a leak)"
                   % (tag, k))
    # what redis holds, database by database
    n = rounds * per
    with direct(r, db=1) as d1, direct(r, db=0) as d0:
        expect(d1.call("DBSIZE"), n, "keys in db 1")
        expect(d0.call("DBSIZE"), n, "keys in db 0")
        vals1 = d1.pipeline([("GET", "k:%d" % i) for i in range(n)])
        vals0 = d0.pipeline([("GET", "k:%d" % i) for i in range(n)])
    assert all(v.startswith(b"A-") for v in vals1), "db 1 holds B's values: %r" % vals1[:5]
    assert all(v.startswith(b"B-") for v in vals0), "db 0 holds A's values: %r" % vals0[:5]
    # it really was one shared connection, switched between databases
    row = pool_row(sp)
    expect(row["opened"], 1, "server connections opened (pool max_connections 1)")
    assert commandstat_calls(r, "select") >= 2, "sidepool never sent SELECT to switch databases"
    # A's database does not outlive A: a new client starts in db 0
    a.close()
    with sp.client(0) as c:
        expect(c.call("GET", "k:0"), b"B-k:0", "a new client's GET (db 0)")
        info = c.call("CLIENT", "INFO")
        assert b" db=0 " in info, "a new client's CLIENT INFO: %r" % info
    expect(b.call("GET", "k:0"), b"B-k:0", "B's GET after A left")
    b.close()


@h.test("SELECT pipelined with commands applies in order; out-of-range and non-integer "
        "SELECT give redis's exact errors; databases: limits the range")
def select_pipelined_and_errors():
    r = h.RedisServer()
    sp = start(r, databases=4)
    with sp.client() as c:
        got = c.pipeline([("SELECT", "2"), ("SET", "sel:k", "in2"), ("SELECT", "0"),
                          ("GET", "sel:k"), ("SELECT", "2"), ("GET", "sel:k"),
                          ("SELECT", "0")])
        expect(got, ["OK", "OK", "OK", None, "OK", b"in2", "OK"],
               "SELECT 2 / SET / SELECT 0 / GET / SELECT 2 / GET pipelined")
        with direct(r, db=2) as d2, direct(r) as d0:
            expect(d2.call("GET", "sel:k"), b"in2", "sel:k in redis db 2")
            expect(d0.call("GET", "sel:k"), None, "sel:k in redis db 0")
        # errors exactly as redis-server gives them
        bad = [("SELECT", "4"), ("SELECT", "16"), ("SELECT", "-1"), ("SELECT", "abc"),
               ("SELECT", "1.5"), ("SELECT", ""), ("SELECT",)]
        got = c.pipeline(bad)
        expect_error(got[0], "ERR DB index is out of range", "SELECT 4 with databases: 4")
        expect_error(got[1], "ERR DB index is out of range", "SELECT 16")
        expect_error(got[2], "ERR DB index is out of range", "SELECT -1")
        expect_error(got[3], "ERR value is not an integer or out of range", "SELECT abc")
        expect_error(got[4], "ERR value is not an integer or out of range", "SELECT 1.5")
        with direct(r) as d:
            ref = d.pipeline(bad[1:])
        expect(got[1:], ref, "the same SELECTs sent to redis-server itself")
        # a failed SELECT leaves the database as it was
        expect(c.call("SELECT", "2"), "OK", "SELECT 2")
        c.call("SELECT", "99")
        expect(c.call("GET", "sel:k"), b"in2", "GET after a failed SELECT (still db 2)")
        # SELECT inside MULTI is queued and takes effect at EXEC
        expect(c.call("SELECT", "0"), "OK", "SELECT 0")
        got = c.pipeline([("MULTI",), ("SELECT", "3"), ("SET", "sel:m", "in3"), ("EXEC",),
                          ("GET", "sel:m")])
        expect(got, ["OK", "QUEUED", "QUEUED", ["OK", "OK"], b"in3"],
               "MULTI / SELECT 3 / SET / EXEC / GET")
        got = c.pipeline([("MULTI",), ("SELECT", "1"), ("DISCARD",), ("GET", "sel:m")])
        expect(got, ["OK", "QUEUED", "OK", b"in3"], "MULTI / SELECT 1 / DISCARD keeps db 3")
        with direct(r, db=3) as d3:
            expect(d3.call("GET", "sel:m"), b"in3", "sel:m in redis db 3")
    # the pooled connections are back in db 0 for the next client
    with sp.client(1) as c2:
        expect(c2.call("GET", "sel:k"), None, "a new client's GET sel:k (db 0)")
        expect(c2.call("GET", "sel:m"), None, "a new client's GET sel:m (db 0)")
    wait_dedicated(sp, 0, "after the transaction")


@h.test("databases set above the server's: a SELECT the server refuses fails that client's "
        "request only; other clients never see the server down")
def databases_above_the_servers():
    r = h.RedisServer()  # 16 databases
    sp = start(r, databases=32)
    with sp.client(0) as a, sp.client(1) as b:
        expect(b.call("SET", "dbx:k", "v"), "OK", "B: SET")
        expect(a.call("SELECT", "20"), "OK", "A: SELECT 20 (allowed by databases: 32)")
        reply = a.call("GET", "dbx:k")
        assert isinstance(reply, h.Error), "A: GET in a database the server lacks: %r" % (reply,)
        h.diag("A: GET in database 20: %s" % reply)
        for i in range(5):
            reply = b.call("GET", "dbx:k")
            expect(reply, b"v", "B: GET %d after A's refused SELECT (the server is up)" % i)
        doc = ctl_json(sp, "servers")["servers"][0]
        expect(doc["state"], "up", "sidepoolctl servers: state (last error %r)" %
               doc.get("last_error"))


# ---------------------------------------------------------------- 2. transactions

@h.test("a SELECT queued in a transaction that aborts (WATCH conflict, EXECABORT) leaves "
        "the client's database as it was, as on redis-server")
def select_in_aborted_transaction():
    r = h.RedisServer()
    sp = start(r)
    with sp.client() as a, direct(r) as other:
        expect(a.call("WATCH", "ab:k"), "OK", "WATCH")
        expect(other.call("SET", "ab:k", "x"), "OK", "a conflicting SET")
        got = a.pipeline([("MULTI",), ("SELECT", "5"), ("EXEC",), ("SET", "ab:w", "1")])
        expect(got, ["OK", "QUEUED", None, "OK"],
               "WATCH / MULTI / SELECT 5 / EXEC (aborted) / SET")
        got = a.pipeline([("MULTI",), ("SELECT", "6"), ("SET", "ab:k"), ("EXEC",),
                          ("SET", "ab:e", "1")])
        expect(got[:2], ["OK", "QUEUED"], "MULTI / SELECT 6")
        assert isinstance(got[3], h.Error) and got[3].startswith("EXECABORT"), got
        expect(got[4], "OK", "SET after EXECABORT")
    for db, keys in ((5, []), (6, [])):
        with direct(r, db=db) as d:
            expect(sorted(d.call("KEYS", "ab:*")), keys,
                   "keys in db %d (the aborted transaction's SELECT was applied)" % db)
    with direct(r) as d:
        expect(d.pipeline([("GET", "ab:w"), ("GET", "ab:e")]), [b"1", b"1"],
               "the SETs after the aborted transactions, in db 0")



@h.test("MULTI: A's commands are QUEUED while other clients' commands answer at once; "
        "EXEC returns the results; DISCARD works; EXEC without MULTI is refused")
def multi_does_not_hold_others():
    r = h.RedisServer()
    sp = start(r)
    a = sp.client()
    expect(a.call("MULTI"), "OK", "A: MULTI")
    expect(a.call("SET", "tx:k", "1"), "QUEUED", "A: SET in MULTI")
    expect(a.call("INCR", "tx:n"), "QUEUED", "A: INCR in MULTI")
    wait_dedicated(sp, 1, "while A is in MULTI")

    def other(i):
        worst = 0.0
        with sp.client(i % 2) as c:
            for j in range(30):
                t0 = time.monotonic()
                expect(c.call("SET", "tx:o:%d" % i, j), "OK", "client %d SET" % i)
                expect(c.call("GET", "tx:o:%d" % i), str(j).encode(), "client %d GET" % i)
                worst = max(worst, time.monotonic() - t0)
            expect(c.call("GET", "tx:k"), None, "client %d: A's queued SET ran early" % i)
        return worst

    t0 = time.monotonic()
    worst = max(h.run_threads(other, 10, h.scale(20), name="other"))
    took = time.monotonic() - t0
    h.diag("10 clients x 30 SET+GET while A was in MULTI: %.2fs, worst round trip %.3fs"
           % (took, worst))
    assert worst < h.scale(1.0), "other clients waited %.2fs behind A's MULTI" % worst
    expect(a.call("EXEC"), ["OK", 1], "A: EXEC")
    with direct(r) as d:
        expect(d.call("GET", "tx:k"), b"1", "tx:k after EXEC")
    wait_dedicated(sp, 0, "after EXEC")
    # DISCARD
    got = a.pipeline([("MULTI",), ("SET", "tx:d", "x"), ("DISCARD",), ("GET", "tx:k")])
    expect(got, ["OK", "QUEUED", "OK", b"1"], "MULTI / SET / DISCARD / GET")
    expect(r.call("EXISTS", "tx:d"), 0, "the discarded SET ran")
    wait_dedicated(sp, 0, "after DISCARD")
    # EXEC and DISCARD without MULTI: redis's own errors
    with sp.client() as c:
        expect_error(c.call("EXEC"), "ERR EXEC without MULTI", "EXEC without MULTI")
        expect_error(c.call("DISCARD"), "ERR DISCARD without MULTI", "DISCARD without MULTI")
        expect_error(c.call("EXEC"), r.call("EXEC"), "EXEC without MULTI, as redis says it")
        # a nested MULTI and an error inside MULTI behave as on redis
        got = c.pipeline([("MULTI",), ("MULTI",), ("SET", "tx:e"), ("EXEC",)])
        expect(got[0], "OK", "MULTI")
        expect_error(got[1], "ERR MULTI calls can not be nested", "nested MULTI")
        assert isinstance(got[2], h.Error) and "wrong number of arguments" in got[2], got[2]
        assert isinstance(got[3], h.Error) and got[3].startswith("EXECABORT"), got[3]
        expect(c.call("SET", "tx:after", "ok"), "OK", "SET after EXECABORT (not QUEUED)")
    wait_dedicated(sp, 0, "at the end")
    a.close()


@h.test("inside MULTI, PING and ECHO are QUEUED and answered in EXEC's array as on "
        "redis-server; CLIENT (answered by sidepool, not the server) is refused and EXEC then "
        "aborts with EXECABORT, as after any queue-time error, so no array has the wrong length")
def local_commands_inside_multi():
    r = h.RedisServer()
    sp = start(r)
    cmds = [("MULTI",), ("SET", "lm:k", "v"), ("PING",), ("ECHO", "e"), ("EXEC",),
            ("GET", "lm:k")]
    with sp.client() as c, direct(r) as d:
        got, want = c.pipeline(cmds), d.pipeline(cmds)
    expect(got, want, "MULTI / SET / PING / ECHO / EXEC / GET")
    cmds = [("CLIENT", "SETNAME", "n"), ("MULTI",), ("SET", "lm:k2", "v"),
            ("CLIENT", "GETNAME"), ("EXEC",), ("GET", "lm:k2"), ("CLIENT", "GETNAME")]
    with sp.client() as c:
        got = c.pipeline(cmds)
    expect(got[:3], ["OK", "OK", "QUEUED"], "CLIENT SETNAME / MULTI / SET")
    assert isinstance(got[3], h.Error) and "CLIENT inside MULTI" in got[3], got[3]
    assert isinstance(got[4], h.Error) and got[4].startswith("EXECABORT"), got[4]
    expect(got[5], None, "the SET queued before the refused command never ran")
    expect(got[6], b"n", "the client's name after the aborted transaction")
    assert r.call("GET", "lm:k2") is None


@h.test("WATCH: a conflicting write makes EXEC return a null array (*-1); without a "
        "conflict EXEC succeeds; one client's WATCH never aborts another's EXEC")
def watch_conflict():
    r = h.RedisServer()
    sp = start(r)
    a, b = sp.client(0), sp.client(1)
    expect(b.call("SET", "w:k", "0"), "OK", "B: SET w:k")
    # conflict
    expect(a.call("WATCH", "w:k"), "OK", "A: WATCH")
    wait_dedicated(sp, 1, "while A watches")
    expect(b.call("SET", "w:k", "b"), "OK", "B: SET w:k (the conflict)")
    expect(a.call("MULTI"), "OK", "A: MULTI")
    expect(a.call("SET", "w:k", "a"), "QUEUED", "A: SET in MULTI")
    v, raw = raw_call(a, "EXEC")
    expect(raw, b"*-1\r\n", "A: EXEC after a conflicting write (raw reply)")
    expect(r.call("GET", "w:k"), b"b", "w:k after the aborted EXEC")
    wait_dedicated(sp, 0, "after the aborted EXEC")
    # no conflict
    got = a.pipeline([("WATCH", "w:k"), ("GET", "w:k"), ("MULTI",), ("SET", "w:k", "a2"),
                      ("EXEC",)])
    expect(got, ["OK", b"b", "OK", "QUEUED", ["OK"]], "WATCH / GET / MULTI / SET / EXEC")
    expect(r.call("GET", "w:k"), b"a2", "w:k after the successful EXEC")
    # WATCH then UNWATCH: the write no longer aborts
    got = a.pipeline([("WATCH", "w:k"), ("UNWATCH",)])
    expect(got, ["OK", "OK"], "WATCH / UNWATCH")
    expect(b.call("SET", "w:k", "b2"), "OK", "B: SET after A's UNWATCH")
    expect(a.pipeline([("MULTI",), ("SET", "w:k", "a3"), ("EXEC",)]), ["OK", "QUEUED", ["OK"]],
           "A: MULTI / SET / EXEC after UNWATCH")
    # C watches; D writes; E (who never watched) runs a transaction: it
    # must succeed, on whatever connection it gets
    c, d, e = sp.client(0), sp.client(1), sp.client(0)
    expect(c.call("WATCH", "w:k"), "OK", "C: WATCH")
    expect(d.call("SET", "w:k", "d"), "OK", "D: SET")
    for i in range(3):
        expect(e.pipeline([("MULTI",), ("SET", "w:k", "e%d" % i), ("EXEC",)]),
               ["OK", "QUEUED", ["OK"]], "E: a transaction while C watches (round %d)" % i)
    expect(c.pipeline([("MULTI",), ("SET", "w:k", "c"), ("EXEC",)]), ["OK", "QUEUED", None],
           "C: EXEC after D's and E's writes")
    expect(r.call("GET", "w:k"), b"e2", "w:k at the end")
    for x in (a, b, c, d, e):
        x.close()
    wait_dedicated(sp, 0, "at the end")


@h.test("a client that leaves mid-transaction leaves no open transaction on any pooled "
        "connection, and its queued SET never runs")
def quit_mid_transaction():
    r = h.RedisServer()
    sp = start(r, pool=ONE_CONN)  # the next client gets the very same connection
    for how in ("close", "QUIT"):
        k = "q:%s" % how
        a = sp.client()
        expect(a.call("MULTI"), "OK", "A: MULTI")
        expect(a.call("SET", k, "never"), "QUEUED", "A: SET in MULTI")
        rows = client_list(r)
        assert any("x" in row["flags"] for row in rows), \
            "redis shows no connection in MULTI while A is in one: %r" % rows
        if how == "QUIT":
            expect(a.call("QUIT"), "OK", "A: QUIT in MULTI")
            assert a.is_closed(), "sidepool did not close A after QUIT"
        a.close()
        poll_clients(r, no_transaction, "no pooled connection left in MULTI (after %s)" % how)
        wait_dedicated(sp, 0, "after A left (%s)" % how)
        # the next client is not inside A's transaction
        with sp.client(1) as b:
            expect(b.call("SET", k + ":b", "b"), "OK", "B: SET after A left (QUEUED means "
                   "it landed in A's transaction)")
            expect(b.call("EXEC"), h.Error("ERR EXEC without MULTI"), "B: EXEC")
        expect(r.call("GET", k), None, "A's queued SET ran after A left (%s)" % how)
        expect(r.call("GET", k + ":b"), b"b", "B's SET in redis")
    # and the same for a client that leaves while it WATCHes
    a = sp.client()
    expect(a.call("WATCH", "q:w"), "OK", "A: WATCH")
    a.close()
    wait_dedicated(sp, 0, "after a watching client left")
    with sp.client() as b, sp.client() as c:
        expect(b.call("SET", "q:w", "1"), "OK", "B: SET q:w")
        expect(c.pipeline([("MULTI",), ("SET", "q:x", "1"), ("EXEC",)]),
               ["OK", "QUEUED", ["OK"]], "C: a transaction after A's WATCH was abandoned")


@h.test("a transaction whose connection dies (CLIENT KILL on redis) is never carried on "
        "outside MULTI: the client is closed, its later commands never run, and a WATCH "
        "that dies the same way does not let EXEC succeed")
def transaction_connection_lost():
    r = h.RedisServer()
    sp = start(r, pool=ONE_CONN)

    def kill_dedicated(pred, what):
        rows = poll_clients(r, lambda rows: any(pred(row) for row in rows), what)
        for row in rows:
            if pred(row):
                r.call("CLIENT", "KILL", "ID", row["id"])

    a = sp.client()
    expect(a.call("MULTI"), "OK", "A: MULTI")
    expect(a.call("SET", "lost:1", "x"), "QUEUED", "A: SET in MULTI")
    kill_dedicated(lambda row: "x" in row["flags"], "redis shows A's connection in MULTI")
    wait_dedicated(sp, 0, "after A's connection was killed")
    a.send(h.encode("SET", "lost:2", "y") + h.encode("EXEC"))
    got, closed = a.read_raw(timeout=2.0)
    assert closed, "A was not closed after its transaction's connection died; got %r" % got
    assert b"+OK" not in got and b"QUEUED" not in got, \
        "a command after the lost MULTI was answered as if it ran: %r" % got
    a.close()
    expect(r.call("GET", "lost:1"), None, "the queued SET of the lost transaction ran")
    expect(r.call("GET", "lost:2"), None, "a SET sent after the lost MULTI ran outside it")
    # WATCH: the same, and EXEC never succeeds on a key changed meanwhile
    w = sp.client()
    expect(w.call("WATCH", "lost:w"), "OK", "W: WATCH")
    kill_dedicated(lambda row: row.get("watch", "0") != "0" or "x" in row["flags"] or
                   row.get("cmd") == "watch", "redis shows W's watching connection")
    wait_dedicated(sp, 0, "after W's connection was killed")
    expect(r.call("SET", "lost:w", "changed"), "OK", "SET lost:w directly")
    w.send(h.encode("MULTI") + h.encode("SET", "lost:w2", "1") + h.encode("EXEC"))
    got, closed = w.read_raw(timeout=2.0)
    assert closed and b"*1\r\n" not in got, \
        "EXEC after a lost WATCH ran or W stayed open: %r" % got
    w.close()
    expect(r.call("GET", "lost:w2"), None, "the transaction after the lost WATCH ran")
    with sp.client() as b:
        expect(b.call("SET", "lost:b", "1"), "OK", "another client after the losses")


@h.test("an HTTP request sent as Redis commands (POST, Host:) closes only its own client: "
        "another client's pipeline on the same server connection gets every reply")
def http_attack_closes_only_its_client():
    r = h.RedisServer()
    sp = start(r, pool=ONE_CONN)
    a = sp.client(timeout=20)
    n = 5000
    a.send(h.encode_many([("INCR", "http:a")] * n))
    with sp.client() as b:
        b.send(b"POST / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        got, closed = b.read_raw(timeout=3.0)
        assert closed and got == b"", "the HTTP client got %r (closed=%s)" % (got, closed)
    replies = a.read_replies(n)
    assert replies == list(range(1, n + 1)), \
        "the neighbour's pipeline was hurt: first wrong %r" % (
            next((x for i, x in enumerate(replies) if x != i + 1), None),)
    a.close()
    assert "cross-protocol" in sp.log_text()


@h.test("a subscriber whose connection dies gets one error and is closed: never that error "
        "and then the answer to its own PING as two replies")
def subscription_connection_lost():
    r = h.RedisServer()
    sp = start(r, pool=ONE_CONN)
    s = sp.client()
    s.send_command("SUBSCRIBE", "lost:ch")
    expect(s.read_reply(), [b"subscribe", b"lost:ch", 1], "SUBSCRIBE")
    rows = poll_clients(r, lambda rows: any(row.get("cmd") == "subscribe" for row in rows),
                        "redis shows the subscriber's connection")
    for row in rows:
        if row.get("cmd") == "subscribe":
            r.call("CLIENT", "KILL", "ID", row["id"])
    wait_dedicated(sp, 0, "after the subscriber's connection was killed")
    try:
        s.send_command("PING")
    except OSError:
        pass  # closed already: fine
    got, closed = s.read_raw(timeout=3.0)
    s.close()
    assert closed, "the subscriber stayed open after its subscription was lost: %r" % got
    assert got.count(b"\r\n") >= 1 and got.startswith(b"-ERR sidepool: connection"), got
    assert b"PONG" not in got and b"pong" not in got, \
        "the subscriber got the loss error and a PING answer: %r" % got
    with sp.client() as b:
        expect(b.call("PING"), "PONG", "another client after the loss")


@h.test("session commands pipelined behind shared requests keep the order; when every "
        "connection is held by a session, others wait up to queue_timeout, then get a clear "
        "'pool exhausted' error (not a hang); a waiter gets the first connection that frees")
def sessions_pipelined_and_pool_exhausted():
    r = h.RedisServer()
    pool = dict(SMALL_POOL)
    pool["queue_timeout"] = "300ms"
    sp = start(r, pool=pool)
    with sp.client() as a:
        expect(a.pipeline([("SET", "pe:k", "1"), ("MULTI",), ("INCR", "pe:k"), ("EXEC",),
                           ("GET", "pe:k")]),
               ["OK", "OK", "QUEUED", [2], b"2"], "SET / MULTI / INCR / EXEC / GET")
        expect(a.pipeline([("SET", "pe:k", "1"), ("BLPOP", "pe:l", "0.1"), ("GET", "pe:k")]),
               ["OK", None, b"1"], "SET / BLPOP 0.1 / GET")
        expect(a.pipeline([("GET", "pe:k"), ("SUBSCRIBE", "pe:ch")]),
               [b"1", [b"subscribe", b"pe:ch", 1]], "GET / SUBSCRIBE")
        expect(r.call("PUBLISH", "pe:ch", "m"), 1, "PUBLISH")
        expect(a.read_reply(), [b"message", b"pe:ch", b"m"], "the message")
        expect(a.pipeline([("UNSUBSCRIBE", "pe:ch"), ("GET", "pe:k"), ("PING",)]),
               [[b"unsubscribe", b"pe:ch", 0], b"1", "PONG"], "UNSUBSCRIBE / GET / PING")
    wait_dedicated(sp, 0, "after the pipelined sessions")
    # max_connections 3: three transactions hold all three connections
    held = [sp.client() for _ in range(3)]
    for i, c in enumerate(held):
        expect(c.call("MULTI"), "OK", "MULTI %d" % i)
    wait_dedicated(sp, 3, "with three clients in MULTI")
    with sp.client() as d, sp.client() as e:
        t0 = time.monotonic()
        reply = d.call("MULTI")
        took = time.monotonic() - t0
        assert isinstance(reply, h.Error) and mentions(reply, "pool exhausted") and \
            mentions(reply, "max_connections"), "a fourth MULTI: %r" % (reply,)
        assert 0.25 <= took < h.scale(1.5), "the fourth MULTI waited %.2fs, not ~0.3s" % took
        t0 = time.monotonic()
        reply = e.call("GET", "pe:k")
        took = time.monotonic() - t0
        assert isinstance(reply, h.Error) and mentions(reply, "max_connections"), \
            "a GET with every connection held: %r" % (reply,)
        assert took < h.scale(1.5), "the GET waited %.2fs" % took
        h.diag("pool exhausted: %s" % reply)
        # a waiter is served as soon as a session ends, well before the timeout
        e.send(h.encode("GET", "pe:k"))
        expect(held[0].pipeline([("EXEC",)]), [[]], "EXEC of the first held transaction")
        expect(e.read_reply(timeout=h.scale(1)), b"1", "the waiting GET, served on release")
        expect(held[0].call("MULTI"), "OK", "MULTI again (the connection came back)")
        for i, c in enumerate(held):
            expect(c.pipeline([("INCR", "pe:n"), ("EXEC",)]), ["QUEUED", [i + 1]],
                   "INCR / EXEC %d" % i)
        wait_dedicated(sp, 0, "after the three EXECs")
        expect(e.call("GET", "pe:n"), b"3", "GET once the sessions are over")
        expect(d.pipeline([("MULTI",), ("INCR", "pe:n"), ("EXEC",)]), ["OK", "QUEUED", [4]],
               "MULTI / INCR / EXEC once the sessions are over")
    for c in held:
        c.close()


# ---------------------------------------------------------------- 3. pub/sub

@h.test("pub/sub: messages in order, PING in subscribed mode, UNSUBSCRIBE returns the "
        "connection to the pool, a subscriber that leaves leaves no subscription")
def pubsub():
    r = h.RedisServer()
    sp = start(r)
    s, p = sp.client(0), sp.client(1)
    s.send(h.encode("SUBSCRIBE", "ch1", "ch2"))
    expect(s.read_replies(2), [[b"subscribe", b"ch1", 1], [b"subscribe", b"ch2", 2]],
           "SUBSCRIBE ch1 ch2")
    expect(s.call("PSUBSCRIBE", "p*"), [b"psubscribe", b"p*", 3], "PSUBSCRIBE p*")
    wait_dedicated(sp, 1, "while subscribed")
    want = []
    for i in range(60):
        ch = ("ch1", "ch2", "px%d" % i)[i % 3]
        expect(p.call("PUBLISH", ch, "m%d" % i), 1, "PUBLISH %s (receivers)" % ch)
        want.append([b"pmessage", b"p*", ch.encode(), b"m%d" % i] if ch.startswith("p")
                    else [b"message", ch.encode(), b"m%d" % i])
    expect(s.read_replies(60), want, "the 60 messages, in publishing order")
    expect(s.call("PING"), [b"pong", b""], "PING in subscribed mode")
    expect(s.call("PING", "hi"), [b"pong", b"hi"], "PING hi in subscribed mode")
    err = s.call("GET", "x")
    assert isinstance(err, h.Error) and "allowed in this context" in err, \
        "GET in subscribed mode: %r" % (err,)
    # a pipelined burst of publishes from several clients still arrives whole
    pubs = [sp.client(i % 2) for i in range(4)]
    for j, c in enumerate(pubs):
        c.send(h.encode_many([("PUBLISH", "ch2", "b%d-%d" % (j, i)) for i in range(25)]))
    for c in pubs:
        expect(c.read_replies(25), [1] * 25, "burst PUBLISH receivers")
        c.close()
    got = s.read_replies(100)
    for j in range(4):
        mine = [m[2] for m in got if m[2].startswith(b"b%d-" % j)]
        expect(mine, [b"b%d-%d" % (j, i) for i in range(25)], "publisher %d's burst order" % j)
    # unsubscribe from everything
    s.send(h.encode("UNSUBSCRIBE"))
    unsub = s.read_replies(2)
    expect(sorted(m[1] for m in unsub), [b"ch1", b"ch2"], "UNSUBSCRIBE (all) channels")
    assert all(m[0] == b"unsubscribe" for m in unsub), unsub
    expect(sorted(m[2] for m in unsub), [1, 2], "UNSUBSCRIBE counts")
    expect(s.call("PUNSUBSCRIBE"), [b"punsubscribe", b"p*", 0], "PUNSUBSCRIBE (all)")
    wait_dedicated(sp, 0, "after unsubscribing from everything")
    expect(p.call("SET", "ps:k", "v"), "OK", "SET")
    expect(s.call("GET", "ps:k"), b"v", "GET on the former subscriber")
    expect(p.call("PUBLISH", "ch1", "late"), 0, "PUBLISH after everyone unsubscribed")
    poll_clients(r, no_subscription, "no subscription left on the server")
    # a subscriber that leaves
    s2 = sp.client(1)
    s2.send(h.encode("SUBSCRIBE", "ch3"))
    expect(s2.read_reply(), [b"subscribe", b"ch3", 1], "S2: SUBSCRIBE ch3")
    s2.send(h.encode("PSUBSCRIBE", "q*"))
    expect(s2.read_reply(), [b"psubscribe", b"q*", 2], "S2: PSUBSCRIBE q*")
    opened = pool_row(sp)["opened"]
    s2.close()
    poll_clients(r, no_subscription, "no subscription left after the subscriber left")
    wait_dedicated(sp, 0, "after the subscriber left")
    expect(p.call("PUBLISH", "ch3", "ghost"), 0, "PUBLISH ch3 after the subscriber left")
    # publishers never see a message on their shared connections
    for i in range(20):
        expect(p.call("PING"), "PONG", "PING on the publisher")
        expect(p.call("GET", "ps:k"), b"v", "GET on the publisher")
    h.diag("connections opened: %d before S2 left, %d now" % (opened, pool_row(sp)["opened"]))
    s.close()
    p.close()


@h.test("a SUBSCRIBE queued in MULTI does not leave a subscribed connection in the pool")
def subscribe_inside_multi():
    r = h.RedisServer()
    sp = start(r)
    a = sp.client(0)
    # redis-server runs a queued SUBSCRIBE at EXEC: the connection is then
    # subscribed, whatever sidepool thought the transaction was
    got = a.pipeline([("MULTI",), ("SUBSCRIBE", "ms:ch"), ("EXEC",)])
    h.diag("MULTI / SUBSCRIBE / EXEC: %r" % (got,))
    expect(got[0], "OK", "MULTI")
    # whoever comes next must find a clean connection
    for i in range(6):
        with sp.client(i % 2) as b:
            expect(b.call("SET", "ms:k%d" % i, "v"), "OK",
                   "client %d: SET after A's MULTI / SUBSCRIBE / EXEC" % i)
            expect(b.call("GET", "ms:k%d" % i), b"v", "client %d: GET" % i)
    # a connection subscribed on the server must be A's own, and then A
    # gets the messages
    subscribed = [row for row in client_list(r) if row.get("sub", "0") != "0"]
    dedicated = pool_row(sp)["dedicated"]
    assert len(subscribed) <= dedicated, \
        "%d server connection(s) subscribed but %d dedicated: a subscribed connection is " \
        "back in the pool" % (len(subscribed), dedicated)
    if subscribed:
        expect(r.call("PUBLISH", "ms:ch", "hi"), 1, "PUBLISH to A's subscription")
        expect(a.read_reply(), [b"message", b"ms:ch", b"hi"], "A receives the message")
    else:
        expect(a.call("GET", "ms:k0"), b"v", "A: GET after the transaction")
    a.close()
    poll_clients(r, no_subscription, "no subscription left after A left")


@h.test("MONITOR streams to its own client only; a monitor that leaves is closed")
def monitor():
    r = h.RedisServer()
    sp = start(r)
    m = sp.client(0)
    expect(m.call("MONITOR"), "OK", "MONITOR")
    wait_dedicated(sp, 1, "while monitoring")
    with sp.client(1) as c:
        expect(c.call("SET", "mon:k", "v"), "OK", "SET while a monitor runs")
        expect(c.call("GET", "mon:k"), b"v", "GET while a monitor runs")
    line = m.read_reply()
    while isinstance(line, str) and "mon:k" not in line:
        line = m.read_reply()
    assert '"SET" "mon:k" "v"' in line, "MONITOR line: %r" % (line,)
    m.close()
    poll_clients(r, lambda rows: all("O" not in row.get("flags", "") for row in rows),
                 "no monitor left on the server")
    wait_dedicated(sp, 0, "after the monitor left")
    with sp.client() as c:
        for i in range(10):
            expect(c.call("GET", "mon:k"), b"v", "GET after the monitor left")


# ---------------------------------------------------------------- 4. blocking

@h.test("BLPOP blocks only its own client: 100 others run at full speed, then a push "
        "wakes it; a client that leaves while blocked leaves no ghost", timeout=45)
def blocking_pop():
    r = h.RedisServer()
    sp = start(r)
    block = 5.0
    blk = sp.client(0, timeout=15)
    t_blk = time.monotonic()
    blk.send(h.encode("BLPOP", "bl:list", int(block)))
    poll_clients(r, blocked, "the BLPOP to be blocked on the server")
    wait_dedicated(sp, 1, "while BLPOP blocks")
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # 100 python threads: keep the GIL moving
    try:
        def other(i):
            worst = 0.0
            with sp.client(i % 2, timeout=10) as c:
                for j in range(10):
                    t0 = time.monotonic()
                    expect(c.call("SET", "bl:o:%d" % i, j), "OK", "SET")
                    worst = max(worst, time.monotonic() - t0)
                    t0 = time.monotonic()
                    expect(c.call("GET", "bl:o:%d" % i), str(j).encode(), "GET")
                    worst = max(worst, time.monotonic() - t0)
            return worst

        t0 = time.monotonic()
        worst = max(h.run_threads(other, 100, h.scale(block), name="other"))
        took = time.monotonic() - t0
    finally:
        sys.setswitchinterval(old_switch)
    h.diag("100 clients x 20 requests while BLPOP blocked: %.2fs, worst %.3fs" % (took, worst))
    assert time.monotonic() - t_blk < block, \
        "the others finished only %.2fs after the BLPOP started" % (time.monotonic() - t_blk)
    assert worst < block / 4, "worst latency of the others %.2fs (BLPOP blocks %.0fs)" % (
        worst, block)
    data, closed = blk.read_raw(timeout=0.01, until_closed=False)
    assert not data and not closed, "the BLPOP answered before the push: %r" % data
    with sp.client(1) as pusher:
        t_push = time.monotonic()
        expect(pusher.call("RPUSH", "bl:list", "wake"), 1, "RPUSH")
        expect(blk.read_reply(), [b"bl:list", b"wake"], "the BLPOP's reply")
        woke = time.monotonic() - t_push
        assert woke < h.scale(1.0), "the BLPOP woke %.2fs after the push" % woke
        expect(blk.call("GET", "bl:o:0"), b"9", "GET on the former blocked client")
        wait_dedicated(sp, 0, "after the BLPOP returned")
        # a client that leaves while blocked
        ghost = sp.client(0)
        ghost.send(h.encode("BLPOP", "bl:ghost", 30))
        poll_clients(r, blocked, "the second BLPOP to be blocked on the server")
        ghost.close()
        poll_clients(r, not_blocked, "no blocked client left on the server")
        wait_dedicated(sp, 0, "after the blocked client left")
        expect(pusher.call("LPUSH", "bl:ghost", "v"), 1, "LPUSH after the blocked client left")
        for _ in range(5):  # time passing is the point: a ghost would pop it
            expect(r.call("LLEN", "bl:ghost"), 1, "LLEN bl:ghost (0: a ghost consumed it)")
            time.sleep(0.05)
        closed = pool_row(sp)["closed"]
        h.diag("pool close reasons: %r" % {k: v for k, v in closed.items() if v})
    blk.close()


@h.test("request_timeout does not cut a blocking command short: BLPOP k 2 with a 500ms "
        "request_timeout waits ~2s and returns a null array")
def blocking_outlives_request_timeout():
    r = h.RedisServer()
    sp = start(r, request_timeout="500ms")
    with sp.client(0, timeout=10) as c, sp.client(1) as other:
        t0 = time.monotonic()
        c.send(h.encode("BLPOP", "rt:list", 2))
        # the others keep working meanwhile
        for i in range(20):
            expect(other.call("INCR", "rt:n"), i + 1, "INCR while BLPOP waits")
        start_pos = c.reader.pos
        v = c.read_reply(timeout=6)
        took = time.monotonic() - t0
        raw = bytes(c.reader.buf[start_pos:c.reader.pos])
        expect(raw, b"*-1\r\n", "BLPOP k 2 after its timeout (raw reply)")
        assert 1.8 <= took < h.scale(3.5), "BLPOP k 2 answered after %.2fs" % took
        expect(c.call("PING"), "PONG", "PING after the BLPOP")
        expect(c.call("GET", "rt:n"), b"20", "GET after the BLPOP")
        # BRPOPLPUSH and BZPOPMIN likewise
        t0 = time.monotonic()
        v, raw = raw_call(c, "BZPOPMIN", "rt:z", 1, timeout=6)
        took = time.monotonic() - t0
        expect(raw, b"*-1\r\n", "BZPOPMIN k 1 after its timeout (raw)")
        assert 0.9 <= took < h.scale(2.5), "BZPOPMIN k 1 answered after %.2fs" % took
    wait_dedicated(sp, 0, "after the blocking commands")


# ---------------------------------------------------------------- 5. authentication

@h.test("client_auth password: NOAUTH before AUTH (for every command but AUTH/HELLO/QUIT), "
        "WRONGPASS, then +OK; one client's AUTH never authenticates another")
def client_auth_password():
    r = h.RedisServer()
    sp = start(r, client_auth={"password": "s3cret pw"})
    # a reference: redis-server itself with the same password
    ref = h.RedisServer()  # (the harness's readiness PING needs no password)
    expect(ref.call("CONFIG", "SET", "requirepass", "s3cret pw"), "OK", "requirepass")
    cmds = [("GET", "k"), ("SET", "k", "v"), ("PING",), ("ECHO", "x"), ("SELECT", "1"),
            ("MULTI",), ("EXEC",), ("WATCH", "k"), ("SUBSCRIBE", "ch"),
            ("PSUBSCRIBE", "p*"), ("PUBLISH", "ch", "m"), ("BLPOP", "l", "1"),
            ("CLIENT", "SETNAME", "x"), ("CLIENT", "GETNAME"), ("CLIENT", "ID"),
            ("RESET",), ("FLUSHALL",), ("NOSUCHCOMMAND", "a"), ("KEYS", "*"),
            ("INFO",), ("DBSIZE",)]
    with sp.client() as c, ref.client() as rc:
        got = c.pipeline(cmds)
        for cmd, g in zip(cmds, got):
            expect_error(g, NOAUTH, "%s before AUTH" % " ".join(cmd))
        # redis-server itself, for the record (it answers EXEC with
        # "EXECABORT ... NOAUTH ..."; sidepool keeps to plain NOAUTH)
        ref_cmds = [x for x in cmds if x[0] != "RESET"]
        for cmd, g, w in zip(ref_cmds, c.pipeline(ref_cmds), rc.pipeline(ref_cmds)):
            if g != w:
                h.diag("%s before AUTH: sidepool %r, redis-server %r" % (" ".join(cmd), g, w))
        # HELLO without AUTH
        hello = c.call("HELLO", "2")
        assert isinstance(hello, h.Error) and hello.startswith(
            "NOAUTH HELLO must be called with the client already authenticated"), hello
        ref_hello = rc.call("HELLO", "2")
        if hello != ref_hello:
            h.diag("HELLO 2 before AUTH: sidepool says %r, redis-server %r" % (hello, ref_hello))
        # wrong, then right
        expect_error(c.call("AUTH", "nope"), WRONGPASS, "AUTH with a wrong password")
        expect_error(rc.call("AUTH", "nope"), WRONGPASS, "redis-server: AUTH wrong password")
        expect_error(c.call("AUTH", "someone", "s3cret pw"), WRONGPASS, "AUTH someone <pw>")
        expect_error(c.call("AUTH"), rc.call("AUTH"), "AUTH without arguments, as redis says")
        expect_error(c.call("GET", "k"), NOAUTH, "GET after a failed AUTH")
        expect(c.call("AUTH", "s3cret pw"), "OK", "AUTH with the right password")
        expect(c.call("SET", "auth:k", "v"), "OK", "SET after AUTH")
        expect(c.call("GET", "auth:k"), b"v", "GET after AUTH")
        # another client on the same (shared) server connections is not authenticated
        with sp.client(1) as d:
            expect_error(d.call("GET", "auth:k"), NOAUTH, "another client's GET")
            expect(d.call("AUTH", "default", "s3cret pw"), "OK", "AUTH default <pw>")
            expect(d.call("GET", "auth:k"), b"v", "GET after AUTH default <pw>")
            # RESET forgets the authentication when one is required
            expect(d.call("RESET"), "RESET", "RESET")
            expect_error(d.call("GET", "auth:k"), NOAUTH, "GET after RESET")
        # a wrong AUTH after a good one: redis keeps the client authenticated
        expect_error(c.call("AUTH", "bad"), WRONGPASS, "a second, wrong AUTH")
        expect(c.call("GET", "auth:k"), b"v", "GET after a wrong second AUTH")
    # QUIT before AUTH
    with sp.client() as q:
        expect(q.call("QUIT"), "OK", "QUIT before AUTH")
        assert q.is_closed(), "QUIT before AUTH did not close the connection"
    # the password is never shown by sidepoolctl config
    code, out, err = ctl(sp, "config")
    assert "s3cret" not in out and "s3cret" not in err, "sidepoolctl config shows the password"
    code, out, err = ctl(sp, "--json", "config")
    assert "s3cret" not in out, "sidepoolctl --json config shows the password"


@h.test("client_auth users: AUTH user pass and HELLO 2 AUTH user pass; wrong pairs refused")
def client_auth_users():
    r = h.RedisServer()
    sp = start(r, client_auth={"users": [{"user": "app", "password": "apw"},
                                         {"user": "ops", "password": "opw"}]})
    with sp.client() as c:
        expect_error(c.call("GET", "k"), NOAUTH, "GET before AUTH")
        expect_error(c.call("AUTH", "apw"), WRONGPASS, "AUTH <password only> (no default user)")
        expect_error(c.call("AUTH", "app", "opw"), WRONGPASS, "AUTH app <ops's password>")
        expect_error(c.call("AUTH", "nobody", "apw"), WRONGPASS, "AUTH <unknown user>")
        expect_error(c.call("AUTH", "APP", "apw"), WRONGPASS, "AUTH APP (user names are exact)")
        expect(c.call("AUTH", "app", "apw"), "OK", "AUTH app apw")
        expect(c.call("SET", "u:k", "v"), "OK", "SET after AUTH app")
        expect(c.call("AUTH", "ops", "opw"), "OK", "AUTH ops opw (switching user)")
    with sp.client(1) as c:
        expect_error(c.call("HELLO", "2", "AUTH", "app", "bad"), WRONGPASS,
                     "HELLO 2 AUTH app <wrong>")
        expect_error(c.call("GET", "u:k"), NOAUTH, "GET after a failed HELLO AUTH")
        hello = c.call("HELLO", "2", "AUTH", "app", "apw")
        assert isinstance(hello, list), "HELLO 2 AUTH app apw: %r" % (hello,)
        fields = dict(zip(hello[0::2], hello[1::2]))
        expect(fields.get(b"proto"), 2, "HELLO 2 AUTH: proto")
        expect(c.call("GET", "u:k"), b"v", "GET after HELLO 2 AUTH")
    with sp.client() as c:
        hello = c.call("HELLO", "2", "AUTH", "ops", "opw", "SETNAME", "opsclient")
        assert isinstance(hello, list), hello
        expect(c.call("CLIENT", "GETNAME"), b"opsclient", "name after HELLO AUTH SETNAME")
    # A HELLO refused with -NOPROTO changes nothing, as on a server without
    # RESP3 (redis checks the version before it looks at AUTH): the client
    # falls back to AUTH, and must not be left authenticated by an error.
    with sp.client() as c:
        expect_error(c.call("HELLO", "3", "AUTH", "app", "apw"),
                     "NOPROTO unsupported protocol version", "HELLO 3 AUTH app apw")
        expect_error(c.call("GET", "u:k"), NOAUTH,
                     "GET after HELLO 3 AUTH app apw was refused with -NOPROTO")


@h.test("backend ACL user: auth {user, password} is sent on every new connection; a "
        "wrong password fails fast with the server's refusal and marks the server down")
def backend_acl_user():
    r = h.RedisServer()
    acl = ("app", "apppw")
    with direct(r) as d:
        expect(d.call("ACL", "SETUSER", "app", "on", ">apppw", "~*", "&*", "+@all"), "OK",
               "ACL SETUSER app")
        expect(d.call("ACL", "SETUSER", "default", "off"), "OK", "ACL SETUSER default off")
    with r.client() as nd:
        expect_error(nd.call("GET", "x"), NOAUTH, "redis without AUTH (default user off)")
    sp = start(r, auth={"user": "app", "password": "apppw"})
    with sp.client() as c:
        for i in range(20):
            expect(c.call("SET", "acl:%d" % i, i), "OK", "SET through sidepool")
        expect(c.pipeline([("SELECT", "2"), ("SET", "acl:db2", "x"), ("SELECT", "0")]),
               ["OK", "OK", "OK"], "SELECT 2 / SET / SELECT 0")
        # a transaction and a blocking command on connections of their own
        expect(c.pipeline([("MULTI",), ("INCR", "acl:n"), ("EXEC",)]), ["OK", "QUEUED", [1]],
               "MULTI / INCR / EXEC")
        expect(c.call("BLPOP", "acl:l", "0.1"), None, "BLPOP with a short timeout")
    with direct(r, auth=acl) as d:
        expect(d.call("GET", "acl:19"), b"19", "acl:19 in redis")
        expect(d.call("ACL", "WHOAMI"), b"app", "ACL WHOAMI")
    with direct(r, db=0, auth=acl) as d:
        expect(d.call("SELECT", "2"), "OK", "SELECT 2")
        expect(d.call("GET", "acl:db2"), b"x", "acl:db2 in redis db 2")
    rows = client_list(r, auth=acl)
    assert rows and all(row["user"] == "app" for row in rows), \
        "sidepool's connections are not all authenticated as app: %r" % [
            (row.get("id"), row.get("user")) for row in rows]
    code, out, err = ctl(sp, "config")
    assert "apppw" not in out, "sidepoolctl config shows the backend password"
    up = ctl_json(sp, "config")["upstreams"][0]
    expect(up.get("auth"), {"user": "app", "password": "********"},
           "sidepoolctl --json config: auth")
    # a wrong password in the config
    bad = start(r, auth={"user": "app", "password": "wrong"})
    with bad.client() as c:
        t0 = time.monotonic()
        reply = c.call("GET", "acl:1")
        took = time.monotonic() - t0
        assert isinstance(reply, h.Error), "GET with a wrong backend password: %r" % (reply,)
        assert mentions(reply, "refused") and "WRONGPASS" in reply, \
            "the error does not say the server refused sidepool's AUTH: %r" % reply
        assert took < h.scale(1.0), "the first error took %.2fs" % took
        t0 = time.monotonic()
        reply = c.call("SET", "acl:x", "y")
        took = time.monotonic() - t0
        assert isinstance(reply, h.Error), "SET with a wrong backend password: %r" % (reply,)
        assert took < h.scale(0.5), "the second error took %.2fs" % took
        h.diag("with a wrong backend password: %s" % reply)
    seen = {}

    def down():
        seen["doc"] = ctl_json(bad, "servers")["servers"][0]
        return seen["doc"]["state"] == "down"

    try:
        h.poll_until(down, h.scale(3), what="sidepoolctl servers to show the server down")
    except AssertionError as e:
        raise AssertionError("%s; last: %r" % (e, seen.get("doc"))) from None
    assert "WRONGPASS" in seen["doc"]["last_error"], seen["doc"]
    code, out, _ = ctl(bad, "servers")
    assert "down" in out and "WRONGPASS" in out, "sidepoolctl servers:\n%s" % out
    code, out, err = ctl(bad, "config")
    assert "wrong" not in out.replace("wrong password", ""), \
        "sidepoolctl config shows the backend password:\n%s" % out


# ---------------------------------------------------------------- 6. HELLO, CLIENT, RESET

@h.test("HELLO answers protocol 2 (HELLO 3: -NOPROTO); CLIENT SETNAME/GETNAME/ID/INFO "
        "are per client and never reach the server")
def hello_and_client_names():
    r = h.RedisServer()
    sp = start(r, pool=ONE_CONN)
    a, b = sp.client(0), sp.client(1)
    hello = a.call("HELLO")
    assert isinstance(hello, list) and len(hello) == 14, "HELLO: %r" % (hello,)
    f = dict(zip(hello[0::2], hello[1::2]))
    expect(sorted(f), sorted([b"server", b"version", b"proto", b"id", b"mode", b"role",
                              b"modules"]), "HELLO's fields")
    expect(f[b"server"], b"redis", "HELLO server")
    expect(f[b"proto"], 2, "HELLO proto")
    assert isinstance(f[b"id"], int), f
    expect(f[b"mode"], b"standalone", "HELLO mode")
    expect(f[b"role"], b"master", "HELLO role")
    expect(f[b"modules"], [], "HELLO modules")
    assert isinstance(f[b"version"], bytes) and f[b"version"][:1].isdigit(), f
    expect(a.call("CLIENT", "ID"), f[b"id"], "CLIENT ID is HELLO's id")
    h2 = a.call("HELLO", "2")
    assert isinstance(h2, list) and dict(zip(h2[0::2], h2[1::2]))[b"proto"] == 2, h2
    expect_error(a.call("HELLO", "3"), "NOPROTO unsupported protocol version", "HELLO 3")
    expect_error(a.call("HELLO", "4"), "NOPROTO unsupported protocol version", "HELLO 4")
    expect_error(a.call("HELLO", "1"), "NOPROTO unsupported protocol version", "HELLO 1")
    expect_error(a.call("HELLO", "abc"), "ERR Protocol version is not an integer or out of range",
                 "HELLO abc")
    expect(a.call("SET", "hello:k", "v"), "OK", "SET after HELLO 3 (still RESP2)")
    expect(a.call("GET", "hello:k"), b"v", "GET after HELLO 3, a RESP2 bulk")
    # names
    h3 = a.call("HELLO", "2", "SETNAME", "x")
    assert isinstance(h3, list), "HELLO 2 SETNAME x: %r" % (h3,)
    expect(a.call("CLIENT", "GETNAME"), b"x", "A: CLIENT GETNAME after HELLO 2 SETNAME x")
    expect(b.call("CLIENT", "GETNAME"), None, "B: CLIENT GETNAME")
    expect(a.call("CLIENT", "SETNAME", "alpha"), "OK", "A: CLIENT SETNAME alpha")
    expect(b.call("CLIENT", "SETNAME", "beta"), "OK", "B: CLIENT SETNAME beta")
    expect(a.call("CLIENT", "GETNAME"), b"alpha", "A: CLIENT GETNAME")
    expect(b.call("CLIENT", "GETNAME"), b"beta", "B: CLIENT GETNAME")
    ida, idb = a.call("CLIENT", "ID"), b.call("CLIENT", "ID")
    assert isinstance(ida, int) and isinstance(idb, int) and ida != idb, (ida, idb)
    info_a = a.call("CLIENT", "INFO")
    assert isinstance(info_a, bytes) and b"name=alpha" in info_a and \
        (b"id=%d " % ida) in info_a, "A: CLIENT INFO %r" % (info_a,)
    info_b = b.call("CLIENT", "INFO")
    assert b"name=beta" in info_b and b"alpha" not in info_b, "B: CLIENT INFO %r" % (info_b,)
    expect_error(a.call("CLIENT", "SETNAME", "two words"),
                 "ERR Client names cannot contain spaces, newlines or special characters.",
                 "CLIENT SETNAME with a space")
    expect(a.call("CLIENT", "GETNAME"), b"alpha", "A's name after the refused SETNAME")
    # the names stay in sidepool: redis's connections have none
    rows = client_list(r)
    assert rows and all(row.get("name", "") == "" for row in rows), \
        "a client name reached a pooled server connection: %r" % [
            (row.get("id"), row.get("name")) for row in rows]
    # CLIENT subcommands that would act on the shared connection are refused
    for args in (("CLIENT", "REPLY", "OFF"), ("CLIENT", "TRACKING", "on"),
                 ("CLIENT", "KILL", "ID", "1"), ("CLIENT", "NO-EVICT", "on")):
        reply = a.call(*args)
        assert isinstance(reply, h.Error) and args[1].upper() in reply, \
            "%s: %r" % (" ".join(args), reply)
    expect(a.call("PING"), "PONG", "PING after the refused CLIENT commands")
    expect(a.call("GET", "hello:k"), b"v", "A: GET after the refused CLIENT commands")
    expect(b.call("GET", "hello:k"), b"v", "B: GET after A's refused CLIENT REPLY OFF")
    # a client that leaves takes its name along
    a.close()
    with sp.client(0) as c:
        expect(c.call("CLIENT", "GETNAME"), None, "a new client's CLIENT GETNAME")
    b.close()


@h.test("errors that quote the client's argument (CLIENT <sub>, HELLO <option>) stay one "
        "line when the argument holds CR LF: the next request gets its own reply")
def echoed_errors_stay_one_line():
    r = h.RedisServer()
    sp = start(r, pool=ONE_CONN)
    with sp.client(0) as c:
        for args in (("CLIENT", "a\r\nb"), ("HELLO", "2", "a\r\n")):
            reply, raw = raw_call(c, *args)
            assert isinstance(reply, h.Error) and raw.count(b"\r\n") == 1 and \
                raw.endswith(b"\r\n"), "%r: one error line expected, got %r" % (args, raw)
            expect(c.call("PING"), "PONG", "PING after %r" % (args,))


@h.test("CLIENT ID (and HELLO's id) is unique among the clients of all workers")
def client_ids_unique():
    r = h.RedisServer()
    cfg = h.redis_config([r], listen=[h.AUTO_TCP, h.AUTO_UNIX], workers=2, pool=SMALL_POOL)
    sp = h.Sidepool(cfg)

    def one(i):
        c = sp.client(i % 2)
        hello = c.call("HELLO")
        return c, c.call("CLIENT", "ID"), dict(zip(hello[0::2], hello[1::2]))[b"id"]

    got = h.run_threads(one, 60, h.scale(20), name="client")
    ids = [x[1] for x in got]
    for c, cid, hid in got:
        expect(hid, cid, "HELLO's id and CLIENT ID of one client")
        c.close()
    dup = sorted(set(i for i in ids if ids.count(i) > 1))
    assert not dup, "%d clients connected at once got only %d distinct CLIENT IDs " \
        "(duplicates: %r...)" % (len(ids), len(set(ids)), dup[:10])


@h.test("RESET after SELECT 3, SETNAME and MULTI: +RESET, then db 0, no name, no MULTI")
def reset():
    r = h.RedisServer()
    sp = start(r)
    with direct(r) as d:
        expect(d.call("SET", "rs:k", "db0"), "OK", "SET rs:k in db 0")
    with sp.client() as c:
        got = c.pipeline([("SELECT", "3"), ("SET", "rs:k", "db3"), ("CLIENT", "SETNAME", "n"),
                          ("WATCH", "rs:k"), ("MULTI",), ("SET", "rs:q", "never")])
        expect(got, ["OK", "OK", "OK", "OK", "OK", "QUEUED"], "the state before RESET")
        wait_dedicated(sp, 1, "in MULTI")
        v, raw = raw_call(c, "RESET")
        expect(raw, b"+RESET\r\n", "RESET (raw reply)")
        expect(c.call("CLIENT", "GETNAME"), None, "the name after RESET")
        expect(c.call("GET", "rs:k"), b"db0", "GET rs:k after RESET (db 0)")
        expect(c.call("SET", "rs:after", "1"), "OK", "SET after RESET (not QUEUED)")
        expect_error(c.call("EXEC"), "ERR EXEC without MULTI", "EXEC after RESET")
        info = c.call("CLIENT", "INFO")
        assert b" db=0 " in info and b"multi=-1" in info, "CLIENT INFO after RESET: %r" % info
        wait_dedicated(sp, 0, "after RESET")
        poll_clients(r, no_transaction, "no transaction left on the server after RESET")
        expect(r.call("GET", "rs:q"), None, "the SET queued before RESET")
        expect(r.call("GET", "rs:after"), b"1", "rs:after in redis db 0")
        # RESET in subscribed mode ends the subscription
        expect(c.call("SUBSCRIBE", "rs:ch"), [b"subscribe", b"rs:ch", 1], "SUBSCRIBE")
        expect(c.call("RESET"), "RESET", "RESET while subscribed")
        expect(c.call("GET", "rs:k"), b"db0", "GET after RESET while subscribed")
        poll_clients(r, no_subscription, "no subscription left after RESET")
        wait_dedicated(sp, 0, "after RESET while subscribed")


# ---------------------------------------------------------------- 7. refused

@h.test("refuse_commands: FLUSHALL and KEYS get an error naming them and never run; "
        "other commands work")
def refuse_commands():
    r = h.RedisServer()
    sp = start(r, refuse_commands=["flushall", "KEYS"])
    with sp.client() as c:
        expect(c.call("SET", "rf:k", "v"), "OK", "SET")
        for args in (("FLUSHALL",), ("flushall", "ASYNC"), ("FlushAll",), ("KEYS", "*")):
            reply = c.call(*args)
            assert isinstance(reply, h.Error) and args[0].upper() in reply and \
                "refuse" in reply.lower(), "%s: %r" % (" ".join(args), reply)
        expect(r.call("GET", "rf:k"), b"v", "rf:k survived the refused FLUSHALL")
        # refused inside MULTI too, without breaking the transaction's order
        got = c.pipeline([("MULTI",), ("KEYS", "*"), ("INCR", "rf:n"), ("EXEC",)])
        expect(got[0], "OK", "MULTI")
        assert isinstance(got[1], h.Error) and "KEYS" in got[1], got[1]
        expect(got[2], "QUEUED", "INCR in MULTI")
        assert got[3] == [1] or (isinstance(got[3], h.Error) and "EXECABORT" in got[3]), got[3]
        expect(c.call("DBSIZE"), r.call("DBSIZE"), "DBSIZE")
        expect(c.call("SCAN", "0", "COUNT", "100")[1] != [], True, "SCAN works")
        expect(c.call("GET", "rf:k"), b"v", "GET")
    wait_dedicated(sp, 0, "at the end")


@h.test("refuse_commands with a subcommand (config|set): either the config is rejected, "
        "or exactly that subcommand is refused")
def refuse_subcommand():
    r = h.RedisServer()
    cfg = h.redis_config([r], workers=1, upstream_extra={"refuse_commands": ["config|set"]})
    text = h.to_yaml(cfg).replace("@tcp", "127.0.0.1:%d" % h.free_port())
    res, _ = h.run_sidepool(["-t", "-c", "{config}"], config_text=text)
    if res.returncode != 0:
        h.diag("refuse_commands: [config|set] is rejected: %s" %
               (res.stderr or res.stdout).strip())
        return
    sp = start(r, refuse_commands=["config|set"])
    with sp.client() as c:
        reply = c.call("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        assert isinstance(reply, h.Error) and "CONFIG" in reply.upper(), \
            "CONFIG SET with refuse_commands: [config|set] (accepted by -t): %r" % (reply,)
        expect(r.call("CONFIG", "GET", "maxmemory-policy"), [b"maxmemory-policy", b"noeviction"],
               "maxmemory-policy in redis")
        expect(c.call("CONFIG", "GET", "maxmemory-policy"),
               [b"maxmemory-policy", b"noeviction"], "CONFIG GET (not refused)")


# ---------------------------------------------------------------- 8. real clients

REDIS_PY = r'''
import inspect, json, sys, time
import redis

host, port, upath, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = {"version": redis.__version__}


def session(r, tag):
    res = {}
    k = "py:%s" % tag
    res["set"] = r.set(k, "v1")
    res["get"] = r.get(k).decode()
    p = r.pipeline(transaction=False)
    for i in range(10):
        p.incr(k + ":n")
    res["pipeline"] = p.execute()
    p = r.pipeline()
    p.multi()
    p.set(k + ":t", "t1")
    p.incr(k + ":tn")
    res["transaction"] = p.execute()
    with r.pipeline() as p:
        p.watch(k)
        cur = p.get(k)
        p.multi()
        p.set(k, cur.decode() + "+w")
        res["watch"] = p.execute()
    res["after_watch"] = r.get(k).decode()
    ps = r.pubsub()
    ps.subscribe("pych:" + tag)
    first = ps.get_message(timeout=2)
    res["subscribed"] = first and [first["type"], first["channel"].decode()]
    res["receivers"] = r.publish("pych:" + tag, "hello")
    msg = None
    deadline = time.time() + 3
    while msg is None and time.time() < deadline:
        msg = ps.get_message(timeout=0.5)
    res["message"] = msg and [msg["type"], msg["channel"].decode(), msg["data"].decode()]
    ps.unsubscribe()
    ps.close()
    name = r.client_getname()
    res["name"] = name.decode() if isinstance(name, bytes) else name
    res["blpop"] = r.blpop(k + ":empty", timeout=1)
    return res


common = dict(password=password or None, db=3, client_name="pyclient",
              socket_timeout=5, socket_connect_timeout=5)
out["tcp"] = session(redis.Redis(host=host, port=port, **common), "tcp")
out["unix"] = session(redis.Redis(unix_socket_path=upath, **common), "unix")
params = inspect.signature(redis.Redis.__init__).parameters
if "protocol" in params:
    try:
        r3 = redis.Redis(host=host, port=port, protocol=3, **common)
        out["resp3"] = {"ping": r3.ping(), "get": (r3.get("py:tcp") or b"").decode()}
    except Exception as e:
        out["resp3"] = {"error": "%s: %s" % (type(e).__name__, e)}
else:
    out["resp3"] = {"unsupported": "redis-py %s has no protocol= option" % redis.__version__}
print(json.dumps(out))
'''


def redis_py_python():
    """An interpreter that can import redis (the test's own, or Debian's)."""
    cands = [sys.executable, "/usr/bin/python3"]
    for py in cands:
        if py and os.access(py, os.X_OK):
            p = subprocess.run([py, "-c", "import redis"], capture_output=True, timeout=20)
            if p.returncode == 0:
                return py
    return None


@h.test("redis-py through TCP and the unix socket: AUTH, SELECT and SETNAME on connect, "
        "set/get, pipeline, transaction, watch, pubsub, blpop; RESP3 as it really goes",
        timeout=60)
def redis_py_client():
    py = redis_py_python()
    if py is None and os.geteuid() == 0 and shutil.which("apt-get"):
        h.diag("redis-py missing: apt-get install -y python3-redis")
        subprocess.run(["apt-get", "install", "-y", "python3-redis"], capture_output=True,
                       timeout=h.scale(50))
        py = redis_py_python()
    if py is None:
        raise h.Skip("redis-py (python3-redis) is not installed and could not be installed")
    r = h.RedisServer()
    sp = start(r, client_auth={"password": "pypw"})
    host, port = h.parse_addr(sp.addr(0))[1]
    upath = h.parse_addr(sp.addr(1))[1]
    p = subprocess.run([py, "-c", REDIS_PY, host, str(port), upath, "pypw"],
                       capture_output=True, text=True, timeout=h.scale(40))
    assert p.returncode == 0, "redis-py script failed (exit %d):\n%s\n%s" % (
        p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    out = json.loads(p.stdout.strip().splitlines()[-1])
    h.diag("redis-py %s (%s); RESP3: %r" % (out["version"], py, out["resp3"]))
    for tag in ("tcp", "unix"):
        res = out[tag]
        what = "redis-py over %s" % tag
        expect(res["set"], True, what + ": set")
        expect(res["get"], "v1", what + ": get")
        expect(res["pipeline"], list(range(1, 11)), what + ": pipeline")
        expect(res["transaction"], [True, 1], what + ": multi/execute")
        expect(res["watch"], [True], what + ": watch/multi/execute")
        expect(res["after_watch"], "v1+w", what + ": value after the watched transaction")
        expect(res["subscribed"], ["subscribe", "pych:" + tag], what + ": subscribe")
        expect(res["receivers"], 1, what + ": publish receivers")
        expect(res["message"], ["message", "pych:" + tag, "hello"], what + ": message")
        expect(res["name"], "pyclient", what + ": client_getname (set on connect)")
        expect(res["blpop"], None, what + ": blpop with a timeout")
    # db=3 on connect really put the keys in database 3
    with direct(r, db=3) as d3:
        expect(d3.call("GET", "py:tcp"), b"v1+w", "py:tcp in redis db 3")
        expect(d3.call("GET", "py:unix"), b"v1+w", "py:unix in redis db 3")
    expect(r.call("EXISTS", "py:tcp", "py:unix"), 0, "redis-py's keys in db 0")
    resp3 = out["resp3"]
    if "error" in resp3:
        assert "NOPROTO" in resp3["error"] or "protocol" in resp3["error"].lower(), resp3
    elif "ping" in resp3:
        expect(resp3["ping"], True, "redis-py protocol=3 ping (fell back to RESP2)")
    poll_clients(r, lambda rows: no_subscription(rows) and no_transaction(rows),
                 "no state left by redis-py on the server")
    rows = client_list(r)
    assert all(row.get("name", "") == "" for row in rows), \
        "redis-py's client name reached the server: %r" % [row.get("name") for row in rows]


HIREDIS_C = r'''
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>

static void show(redisReply *r)
{
	if (r == NULL) { printf("NULL\n"); return; }
	switch (r->type) {
	case REDIS_REPLY_STATUS: printf("+%s\n", r->str); break;
	case REDIS_REPLY_ERROR: printf("-%s\n", r->str); break;
	case REDIS_REPLY_INTEGER: printf(":%lld\n", r->integer); break;
	case REDIS_REPLY_NIL: printf("nil\n"); break;
	case REDIS_REPLY_STRING: printf("$%s\n", r->str); break;
	case REDIS_REPLY_ARRAY: printf("*%zu\n", r->elements);
		for (size_t i = 0; i < r->elements; i++) show(r->element[i]);
		break;
	default: printf("?%d\n", r->type);
	}
}

int main(int argc, char **argv)
{
	struct timeval tv = { 5, 0 };
	redisContext *c = argv[1][0] == '/' ? redisConnectUnixWithTimeout(argv[1], tv) :
	    redisConnectWithTimeout(argv[1], atoi(argv[2]), tv);
	const char *tag = argv[3];
	if (c == NULL || c->err) { printf("connect failed\n"); return 1; }
	redisSetTimeout(c, tv);
	redisReply *r;
	r = redisCommand(c, "SELECT 4"); show(r); freeReplyObject(r);
	r = redisCommand(c, "SET hi:%s %s", tag, "hv"); show(r); freeReplyObject(r);
	for (int i = 0; i < 5; i++) redisAppendCommand(c, "INCR hi:%s:n", tag);
	for (int i = 0; i < 5; i++) { redisGetReply(c, (void **)&r); show(r); freeReplyObject(r); }
	r = redisCommand(c, "MULTI"); show(r); freeReplyObject(r);
	r = redisCommand(c, "GET hi:%s", tag); show(r); freeReplyObject(r);
	r = redisCommand(c, "EXEC"); show(r); freeReplyObject(r);
	redisFree(c);
	return 0;
}
'''


@h.test("hiredis (libhiredis) and redis-cli -n 2 through TCP and the unix socket")
def hiredis_and_redis_cli():
    r = h.RedisServer()
    sp = start(r)
    host, port = h.parse_addr(sp.addr(0))[1]
    upath = h.parse_addr(sp.addr(1))[1]
    # redis-cli -n 2 sends SELECT 2 when it connects
    for i, tag in ((0, "tcp"), (1, "unix")):
        res = sp.cli("-n", "2", "SET", "cli:%s" % tag, "v-%s" % tag, listener=i)
        assert res.returncode == 0 and res.stdout.strip() == "OK", \
            "redis-cli -n 2 SET over %s: %r %r" % (tag, res.stdout, res.stderr)
        res = sp.cli("-n", "2", "GET", "cli:%s" % tag, listener=i)
        expect(res.stdout.strip(), "v-%s" % tag, "redis-cli -n 2 GET over %s" % tag)
        res = sp.cli("GET", "cli:%s" % tag, listener=i)
        expect(res.stdout.strip(), "", "redis-cli (db 0) GET over %s" % tag)
    with direct(r, db=2) as d2:
        expect(d2.pipeline([("GET", "cli:tcp"), ("GET", "cli:unix")]), [b"v-tcp", b"v-unix"],
               "redis-cli's keys in redis db 2")
    expect(r.call("EXISTS", "cli:tcp", "cli:unix"), 0, "redis-cli's keys in db 0")
    # redis-cli -3 asks for RESP3 with HELLO 3: it must not hang
    res = sp.cli("-3", "PING", listener=0, timeout=10)
    h.diag("redis-cli -3 PING: exit %d, stdout %r, stderr %r" % (
        res.returncode, res.stdout.strip(), res.stderr.strip()))
    assert "PONG" in res.stdout or "NOPROTO" in (res.stdout + res.stderr), res
    # hiredis
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not os.path.exists("/usr/include/hiredis/hiredis.h"):
        h.diag("libhiredis-dev or a C compiler is missing: the hiredis part is skipped")
        return
    d = h.mkdtemp("sp-hiredis-")
    src, exe = os.path.join(d, "t.c"), os.path.join(d, "t")
    with open(src, "w") as f:
        f.write(HIREDIS_C)
    p = subprocess.run([cc, "-o", exe, src, "-lhiredis"], capture_output=True, text=True,
                       timeout=h.scale(60))
    if p.returncode != 0:
        h.diag("cannot build the hiredis client, part skipped:\n%s" % p.stderr[-1000:])
        return
    for args, tag in (([host, str(port)], "tcp"), ([upath, "0"], "unix")):
        p = subprocess.run([exe] + args + [tag], capture_output=True, text=True,
                           timeout=h.scale(20))
        lines = p.stdout.split("\n")[:-1]
        expect(lines, ["+OK", "+OK", ":1", ":2", ":3", ":4", ":5", "+OK", "+QUEUED", "*1",
                       "$hv"], "hiredis session over %s (stderr %r)" % (tag, p.stderr))
    with direct(r, db=4) as d4:
        expect(d4.pipeline([("GET", "hi:tcp"), ("GET", "hi:unix")]), [b"hv", b"hv"],
               "hiredis's keys in redis db 4")


@h.test("RESET waiting for a stream's owed reply (SUBSCRIBE without a channel, redis "
        "stopped) when the server dies: the SUBSCRIBE gets its error, RESET is answered "
        "+RESET, the client goes on")
def reset_waiting_on_a_stream_that_dies():
    r = h.RedisServer()
    sp = start(r)
    with sp.client(timeout=10) as c:
        assert c.call("PING") == "PONG"
        r.pause()
        # one write: RESET is parsed right behind the SUBSCRIBE and waits
        # for the reply the stream owes
        c.send(h.encode("SUBSCRIBE") + h.encode("RESET"))
        h.poll_until(lambda: h.tcp_recv_queue(r.port) > 0, h.scale(5),
                     what="the SUBSCRIBE to reach the stopped redis")
        r.kill()
        got = c.read_replies(2, timeout=5)
        assert isinstance(got[0], h.Error) and got[0].startswith("ERR sidepool:"), \
            "the SUBSCRIBE whose connection died got %r" % (got[0],)
        assert got[1] == "RESET", "RESET got %r" % (got[1],)
        r.start()
        assert c.call("SET", "after-reset", "1") == "OK"
    assert sp.alive()


if __name__ == "__main__":
    h.run()
