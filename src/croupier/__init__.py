"""croupier: an HTTP load balancer that deals requests round robin."""

__version__ = "0.1.0"


def data_plane_build() -> str:
    """"compiled" when mypyc built the data plane into C extensions (setup.py), else
    "interpreted": same source, about a third more CPU per request."""
    from croupier.proxy import client

    return "interpreted" if client.__file__.endswith(".py") else "compiled"
