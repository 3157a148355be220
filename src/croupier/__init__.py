"""croupier: an HTTP load balancer that deals requests round robin."""

__version__ = "0.1.0"
