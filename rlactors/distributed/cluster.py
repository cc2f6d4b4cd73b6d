"""The Ray cluster a run uses: the caller's `ray.init()`, the one `RAY_ADDRESS` names (`ray job
submit` sets it), or a private local one; with a warning for a cluster reached over the network
without token authentication, since whoever can reach a Ray cluster can run code on it (SECURITY.md)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}


def has_token(env: Mapping[str, str]) -> bool:
    """Token authentication is on and a token is at hand (variable, file, or Ray's default file)."""
    if env.get("RAY_AUTH_MODE", "").lower() != "token":
        return False
    path = env.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return bool(env.get("RAY_AUTH_TOKEN")) or os.path.isfile(path)


def insecure_address_warning(address: str, env: Mapping[str, str]) -> str | None:
    """The warning to print for `address` (RAY_ADDRESS), or None when it is local or authenticated."""
    if address in ("auto", "local"):
        return None
    host = urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""
    if host in LOOPBACK or host.startswith("127.") or has_token(env):
        return None
    return (
        f"rlactors: WARNING: connecting to the Ray cluster at {address} without token authentication "
        "(RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or ~/.ray/auth_token): anyone who can reach it can run "
        "code on it. Turn token authentication on (cluster/ templates do) or keep it on a private network."
    )


def connect() -> bool:
    """Joins a Ray cluster unless the caller has; whether this call started Ray (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:  # set by `ray job submit`, or by the user for a cluster
        warning = insecure_address_warning(address, os.environ)
        if warning:
            print(warning, flush=True)
        ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
    else:  # a private local cluster on loopback, no dashboard
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=True,
            logging_level=logging.WARNING,
        )
    return True
