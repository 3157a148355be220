"""`check` refuses everything `run` would, with the same words: file, key and reason, exit 1,
and never a traceback. Each bad config is run through both commands, as subprocesses."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import CROUPIER, free_port

BASE = """{top}
[admin]
listen = "127.0.0.1:{admin}"

[[listeners]]
name = "web"
listen = "127.0.0.1:{port}"
pool = "app"
{listener}
[[pools]]
name = "app"
members = [{members}]
{pool}
"""

# (what is wrong, the parts that make it so, the key the error names, words of its reason)
BAD = [
    ("an unknown key", {"top": "listners = 1"}, "listners", "unknown key"),
    ("a listener's pool that is not there", {"listener": 'routes = []\n'
                                             '[[listeners]]\nname = "b"\n'
                                             'listen = "127.0.0.1:{port2}"\npool = "nope"'},
     "listeners[1] (b).pool", "no pool named 'nope'"),
    ("a route to no pool", {"listener": '[[listeners.routes]]\npath_prefix = "/x"\n'
                                        'pool = "nope"'},
     "listeners[0] (web).routes[0].pool", "no pool named 'nope'"),
    ("a route that matches nothing", {"listener": '[[listeners.routes]]\npool = "app"'},
     "listeners[0] (web).routes[0]", "a route needs path_prefix, host, or both"),
    ("two listeners of one name", {"listener": '[[listeners]]\nname = "web"\n'
                                               'listen = "127.0.0.1:{port2}"\npool = "app"'},
     "listeners[1] (web).name", "already defined"),
    ("two listeners on one address", {"listener": '[[listeners]]\nname = "b"\n'
                                                  'listen = "127.0.0.1:{port}"\npool = "app"'},
     "listeners[1] (b).listen", "already used by listener 'web'"),
    ("a listener on the admin address", {"listener": '[[listeners]]\nname = "b"\n'
                                                     'listen = "127.0.0.1:{admin}"\n'
                                                     'pool = "app"'},
     "listeners[1] (b).listen", "already used by [admin].listen"),
    ("a port out of range", {"listener": '[[listeners]]\nname = "b"\n'
                                         'listen = "127.0.0.1:70000"\npool = "app"'},
     "listeners[1] (b).listen", "out of range 1-65535"),
    ("a member that is no address", {"members": '"nowhere.example:80"'},
     "pools[0] (app).members[0]", "neither a host in [[hosts]] nor an IP address"),
    ("a member port of 0", {"members": '{ address = "127.0.0.1", port = 0 }'},
     "pools[0] (app).members[0].port", "greater than or equal to 1"),
    ("a negative weight", {"members": '{ address = "127.0.0.1", port = 9, weight = -1 }'},
     "pools[0] (app).members[0].weight", "greater than or equal to 0"),
    ("a zero timeout", {"listener": 'header_timeout = "0s"'},
     "listeners[0] (web).header_timeout", "greater than 0"),
    ("a negative timeout", {"pool": 'response_timeout = "-1s"'},
     "pools[0] (app).response_timeout", "bad duration"),
    ("a check every 0 ms", {"pool": '[pools.health]\ninterval = "0ms"'},
     "pools[0] (app).health.interval", "greater than 0"),
    ("a maintenance window for no member", {"top": '[[maintenance]]\n'
                                                   'target = "app/127.0.0.1:10"\n'
                                                   'start = 2099-01-01T00:00:00Z\n'
                                                   'duration = "1h"'},
     "maintenance[0].target", "names no member or host of this config"),
    ("a window that ends before it starts", {"top": '[[maintenance]]\n'
                                                    'target = "app/127.0.0.1:9"\n'
                                                    'start = 2099-01-01T00:00:00Z\n'
                                                    'end = 2098-01-01T00:00:00Z'},
     "maintenance[0]", "end must be after start"),
    ("an access log in no directory", {"top": '[access_log]\npath = "/nonexistent/x/access.log"'},
     "access_log.path", "directory /nonexistent/x does not exist"),
    ("a listener's access log in a directory", {"listener": 'access_log = { path = "/tmp" }'},
     "listeners[0] (web).access_log.path", "/tmp is a directory"),
    ("an access log format that is not one", {"top": '[access_log]\npath = "-"\nformat = "xml"'},
     "access_log.format", "'text' or 'json'"),
    ("an algorithm no policy registered", {"pool": 'algorithm = "fastest"'},
     "pools[0] (app).algorithm", "unknown algorithm 'fastest': expected one of hash, "
     "least_conn, random, round_robin, two_choices"),
    ("a bad hash key", {"pool": 'algorithm = "hash"\nhash_key = "body"'},
     "pools[0] (app).hash_key", "bad hash_key"),
    ("a host address that is no address", {"top": '[[hosts]]\nname = "h"\n'
                                                  'address = "bad host!"'},
     "hosts[0] (h).address", "neither an IP address nor a host name"),
    ("two pools of one name", {"pool": '[[pools]]\nname = "app"\nmembers = ["127.0.0.1:9"]'},
     "pools[1] (app).name", "already defined"),
    ("no workers", {"top": "workers = 0"}, "workers", "greater than or equal to 1"),
    ("no pipelining room", {"listener": "max_pipelined = 0"},
     "listeners[0] (web).max_pipelined", "greater than or equal to 1"),
    ("a TOML syntax error", {"top": "workers = "}, "(syntax)", "Invalid value"),
]


def _write(tmp_path: Path, name: str, parts: dict[str, str]) -> Path:
    values = {"top": "", "listener": "", "pool": "", "members": '"127.0.0.1:9"',
              "port": str(free_port()), "port2": str(free_port()), "admin": str(free_port())}
    ports = {f"{{{k}}}": values[k] for k in ("port", "port2", "admin")}
    for key, part in parts.items():     # the parts name ports too
        for placeholder, port in ports.items():
            part = part.replace(placeholder, port)
        values[key] = part
    text = BASE.format(**values)
    path = tmp_path / f"{name.replace(' ', '-')}.toml"
    path.write_text(text)
    return path


def _both(path: Path) -> list[subprocess.CompletedProcess[str]]:
    return [subprocess.run([CROUPIER, command, "-c", str(path)], capture_output=True,
                           text=True, timeout=60) for command in ("check", "run")]


def test_every_bad_config_is_refused_alike_by_check_and_run(tmp_path):
    paths = [_write(tmp_path, name, parts) for name, parts, _, _ in BAD]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(_both, paths))
    failures = []
    for (name, _, key, reason), path, (check, run) in zip(BAD, paths, results, strict=True):
        for command, r in (("check", check), ("run", run)):
            said = r.stderr
            if (r.returncode != 1 or f"{path}: {key}: " not in said or reason not in said
                    or "Traceback" in said):
                failures.append(f"{name}: croupier {command} exited {r.returncode}:\n{said}")
        if check.stderr != run.stderr:
            failures.append(f"{name}: check and run say different things:\n{check.stderr}\n"
                            f"{run.stderr}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("content", ["{not json", '{"version": 1, "member_admin": '
                                     '{"app/127.0.0.1:9": "bogus"}}',
                                     '{"version": 7}', '[]'])
def test_a_state_file_that_cannot_be_used_is_set_aside_and_croupier_starts(tmp_path, content):
    from helpers import Running
    port = free_port()
    path = _write(tmp_path, "state", {"port": str(port)})
    state = tmp_path / "croupier.state.json"
    state.write_text(content)
    running = Running(path, port)
    code, out = running.stop()
    assert code == 0, out
    assert "cannot be used" in out and "starting from the config alone" in out
    assert (tmp_path / "croupier.state.json.unreadable").read_text() == content


def test_a_member_removed_under_its_windows_never_keeps_croupier_from_starting(tmp_path):
    from helpers import Running
    port, admin = free_port(), free_port()
    window = ('[[maintenance]]\ntarget = "app/127.0.0.1:9"\nstart = 2099-01-01T00:00:00Z\n'
              'duration = "1h"')
    path = _write(tmp_path, "croupier", {"top": window, "port": str(port), "admin": str(admin),
                                         "members": '"127.0.0.1:9", "127.0.0.1:10"'})
    first = Running(path, port)
    try:
        cli = [CROUPIER, "-c", str(path)]
        for args in (["schedule", "127.0.0.1:9", "--start", "+1h", "--duration", "1h"],
                     ["members", "remove", "app/127.0.0.1:9"]):
            r = subprocess.run([cli[0], *args, *cli[1:]], capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
        reload = subprocess.run([CROUPIER, "reload", "-c", str(path)], capture_output=True,
                                text=True, timeout=60)
        assert reload.returncode == 0, reload.stdout + reload.stderr
    finally:
        code, out = first.stop()
    assert code == 0, out
    second = Running(path, port)        # starts: the windows are dropped, with a warning
    code, out = second.stop()
    assert code == 0, out
    assert "maintenance[0] (app/127.0.0.1:9) left out" in out
    assert "from the state file dropped" in out
