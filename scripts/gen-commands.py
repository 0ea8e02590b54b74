#!/usr/bin/env python3
"""gen-commands.py - print sidepool's Redis command table (src/command.c).

Asks a running redis-server for COMMAND INFO and prints the two sorted C
arrays that src/command.c holds between its GENERATED markers: the
commands, and the subcommands of container commands ("client|kill").
The proxy's policy for each command is decided here, in POLICY below, and
explained in the comment block of src/command.c.

    redis-server --port 23456 --save '' --appendonly no &
    scripts/gen-commands.py --port 23456 > /tmp/table.c
    scripts/gen-commands.py --port 23456 --update src/command.c

Only the standard library: a dozen lines of RESP2 client are enough.
"""

import argparse
import re
import socket
import sys

# What sidepool does with a command (see the comment in src/command.c).
LOCAL = ["ping", "echo", "quit"]
STATEFUL = [
    "select", "auth", "hello", "multi", "exec", "discard", "watch", "unwatch",
    "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe",
    "sunsubscribe", "monitor", "reset", "readonly", "readwrite", "asking",
    "blpop", "brpop", "brpoplpush", "blmove", "blmpop", "bzpopmin", "bzpopmax",
    "bzmpop", "wait", "waitaof", "client", "script|debug",
]
REFUSED = [
    "sync", "psync", "replconf", "shutdown", "slaveof", "replicaof",
    "failover", "debug", "cluster", "module|load", "module|loadex",
    "module|unload",
]
POLICY = {}
POLICY.update({n: "CMD_LOCAL" for n in LOCAL})
POLICY.update({n: "CMD_STATEFUL" for n in STATEFUL})
POLICY.update({n: "CMD_REFUSED" for n in REFUSED})

# Block only when asked to (XREAD ... BLOCK ms): the caller looks.
MAY_BLOCK = {"xread", "xreadgroup"}
# Block the connection without redis flagging them "blocking".
BLOCKING = {"wait", "waitaof"}

# Commands newer than the server the table is made from, which must not be
# forwarded blindly to a newer backend: (name, arity, first, last, step, flags).
EXTRA = [
    ("waitaof", 4, 0, 0, 0, ["noscript"]),  # redis 7.2: blocks like WAIT
]

FLAGS = {
    "write": "CMDF_WRITE",
    "readonly": "CMDF_READONLY",
    "admin": "CMDF_ADMIN",
    "pubsub": "CMDF_PUBSUB",
    "blocking": "CMDF_BLOCKING",
    "movablekeys": "CMDF_MOVABLE_KEYS",
}


def resp_read(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise EOFError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b":"):
        return int(rest) if kind == b":" else rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode()
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [resp_read(f) for _ in range(n)]
    raise RuntimeError("unexpected reply type %r" % kind)


def command(sock, f, *args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    sock.sendall(out)
    return resp_read(f)


def row(info):
    """(name, arity, first, last, step, flags, subcommands) of one entry."""
    name, arity, flags, first, last, step = info[:6]
    subs = info[9] if len(info) > 9 and info[9] else []
    return name.lower(), arity, first, last, step, list(flags), subs


def flags_of(name, first, flags, subs_have_keys, container):
    out = []
    for f in flags:
        if f == "blocking" and name in MAY_BLOCK:
            continue
        if f in FLAGS:
            out.append(FLAGS[f])
    if name in BLOCKING and "CMDF_BLOCKING" not in out:
        out.append("CMDF_BLOCKING")
    if name in MAY_BLOCK:
        out.append("CMDF_MAY_BLOCK")
    if container:
        out.append("CMDF_SUBCOMMANDS")
    if first == 0 and "movablekeys" not in flags and not subs_have_keys:
        out.append("CMDF_NOKEYS")
    return " | ".join(out) if out else "0"


def c_row(name, arity, first, last, step, flags, policy):
    return '\t{ "%s", %d, %d, %d, %d, %s, %s },' % (
        name, arity, first, last, step, flags, policy)


def build(host, port):
    sock = socket.create_connection((host, port))
    f = sock.makefile("rb")
    version = "unknown"
    for line in command(sock, f, "INFO", "server").splitlines():
        if line.startswith("redis_version:"):
            version = line.split(":", 1)[1].strip()
    infos = command(sock, f, "COMMAND", "INFO")
    sock.close()

    top, sub = [], []
    for info in infos:
        name, arity, first, last, step, flags, subs = row(info)
        subrows = [row(s) for s in subs]
        subs_have_keys = any(s[2] != 0 or "movablekeys" in s[5]
                             for s in subrows)
        policy = POLICY.get(name, "CMD_FORWARD")
        top.append(c_row(name, arity, first, last, step,
                         flags_of(name, first, flags, subs_have_keys,
                                  bool(subs)), policy))
        for sname, sarity, sfirst, slast, sstep, sflags, _ in subrows:
            spolicy = POLICY.get(sname, policy)
            sub.append(c_row(sname, sarity, sfirst, slast, sstep,
                             flags_of(sname, sfirst, sflags, False, False),
                             spolicy))
    known = {r.split('"')[1] for r in top}
    for name, arity, first, last, step, flags in EXTRA:
        if name not in known:
            top.append(c_row(name, arity, first, last, step,
                             flags_of(name, first, flags, False, False),
                             POLICY.get(name, "CMD_FORWARD")))
    key = lambda r: r.split('"')[1].encode()
    return version, sorted(top, key=key), sorted(sub, key=key)


def render(version, top, sub):
    head = "\t/* generated by scripts/gen-commands.py from redis-server %s */" % version
    return ("%s\n%s\n" % (head, "\n".join(top)),
            "%s\n%s\n" % (head, "\n".join(sub)))


def update(path, version, top, sub):
    with open(path) as fp:
        text = fp.read()
    tops, subs = render(version, top, sub)
    for tag, body in (("COMMANDS", tops), ("SUBCOMMANDS", subs)):
        pat = re.compile(r"(\t/\* BEGIN GENERATED %s \*/\n).*?(\t/\* END GENERATED %s \*/\n)"
                         % (tag, tag), re.S)
        text, n = pat.subn(lambda m: m.group(1) + body + m.group(2), text)
        if n != 1:
            sys.exit("%s: no GENERATED %s markers" % (path, tag))
    with open(path, "w") as fp:
        fp.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=6379)
    ap.add_argument("--update", metavar="FILE",
                    help="rewrite the GENERATED blocks of FILE in place")
    args = ap.parse_args()
    version, top, sub = build(args.host, args.port)
    if args.update:
        update(args.update, version, top, sub)
        return
    tops, subs = render(version, top, sub)
    print("static const struct command commands[] = {\n%s};\n" % tops)
    print("static const struct command subcommands[] = {\n%s};" % subs)


if __name__ == "__main__":
    main()
