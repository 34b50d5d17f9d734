# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Can the Hugging Face Hub be reached? Decided once per process (and endpoint), in at most `CONNECT_TIMEOUT` s.

huggingface_hub retries an unreachable Hub five times with back-off (about 23 s, one warning per try) before it
gives up. Loaders ask here first: `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) settles it at once; otherwise one TCP
connection to the endpoint's host and port (`HF_ENDPOINT`, default huggingface.co:443; the proxy's, when an
`https_proxy`/`http_proxy` applies) is opened with a `CONNECT_TIMEOUT` limit. The answer is cached per endpoint, so a
process pays at most one probe per endpoint. A reachable port does not promise a working Hub (a 5xx, a gated
repository): those still come back as huggingface_hub's own errors.

    from dmae_hf.hub.reach import hub_unreachable_reason, require_hub, require_hub_dataset
    hub_unreachable_reason()  # None, or e.g. "HF_HUB_OFFLINE=1 is set"
    require_hub("Model 'org/name'", "Pass a local directory instead.")  # OSError (one line) when unreachable

Standard library and huggingface_hub only (no torch, no transformers).
"""

import functools
import os
import socket
import threading
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

CONNECT_TIMEOUT = 1.5  # seconds for the one probe (name resolution included)
OFFLINE_REASON = "HF_HUB_OFFLINE=1 is set"


class HubUnreachableError(OSError):
    """The Hub is needed but offline mode is on or it cannot be reached; the message is one line: what, why, fix.
    An `OSError` like every transformers/huggingface_hub loading error, so loaders pass its message through."""


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _target(endpoint: str) -> tuple[str, int, str]:
    """(host, port, what) of the first hop to `endpoint`: the endpoint itself, or the proxy that would carry it."""
    url = urlsplit(endpoint)
    host, scheme = url.hostname or "", url.scheme or "https"
    port = url.port or (443 if scheme == "https" else 80)
    proxy = getproxies().get(scheme) or getproxies().get("all")
    if proxy and not proxy_bypass(host):
        purl = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if purl.hostname:
            return purl.hostname, purl.port or (443 if purl.scheme == "https" else 80), f"its proxy {proxy}"
    return host, port, ""


def _describe(error: BaseException | None) -> str:
    if error is None:
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    if isinstance(error, socket.gaierror):
        return "its host name does not resolve: no network or no DNS"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    return f"{type(error).__name__}: {error}"[:100]


@functools.cache
def _probe(endpoint: str, timeout: float) -> str | None:
    """None if one TCP connection to `endpoint` (or its proxy) opens within `timeout` s, else why not. The
    connection runs in a daemon thread so that a slow name resolution cannot hold the caller past `timeout`."""
    host, port, via = _target(endpoint)
    if not host:
        return f"HF_ENDPOINT={endpoint!r} names no host"
    outcome = {}

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as error:
            outcome["error"] = error

    thread = threading.Thread(target=connect, name="dmae-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome.get("ok"):
        return None
    where = "huggingface.co" if urlsplit(endpoint).hostname == "huggingface.co" else f"the Hub at {endpoint}"
    return f"{where} cannot be reached{f' through {via}' if via else ''} ({_describe(outcome.get('error'))})"


def hub_unreachable_reason() -> str | None:
    """None when the Hub can be reached; else a short cause: "HF_HUB_OFFLINE=1 is set" or, e.g., "huggingface.co
    cannot be reached (its host name does not resolve: no network or no DNS)". Cached per endpoint (`HF_ENDPOINT`)."""
    if _offline():
        return OFFLINE_REASON
    return _probe(_endpoint(), CONNECT_TIMEOUT)


def require_hub(what: str, fix: str) -> None:
    """Raise `HubUnreachableError` ("<what> needs the Hugging Face Hub, and <cause>. <fix>", one line) when the Hub
    cannot be reached; return None when it can."""
    reason = hub_unreachable_reason()
    if reason is not None:
        raise HubUnreachableError(f"{what} needs the Hugging Face Hub, and {reason}. {fix}".replace("\n", " "))


def hub_dataset_cached(dataset_id: str, cache_dir=None) -> bool:
    """Whether `datasets` holds a prepared copy of Hub dataset `dataset_id` in its cache (`HF_DATASETS_CACHE`), the
    copy `datasets.load_dataset(..., streaming=False)` falls back to when `HF_HUB_OFFLINE=1` is set."""
    if cache_dir is None:
        cache_dir = os.environ.get("HF_DATASETS_CACHE") or os.path.join(
            os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "datasets")
    namespace, _, name = dataset_id.rpartition("/")
    folder = os.path.join(os.path.expanduser(str(cache_dir)), f"{namespace}___{name}" if namespace else name)
    return os.path.isdir(folder) and any(os.scandir(folder))


def require_hub_dataset(dataset_id: str, fix: str | None = None) -> None:
    """Fail fast (one line, `HubUnreachableError`) when Hub dataset `dataset_id` cannot be read: the Hub cannot be
    reached, unless `HF_HUB_OFFLINE=1` is set and `datasets` has a prepared copy in its cache (then it reads that).

    Call it before `datasets.load_dataset_builder(dataset_id)` for an id that is not a local path; `fix` replaces the
    default advice (pass image files, a folder, or a local copy of the dataset in the Hub layout)."""
    reason = hub_unreachable_reason()
    if reason is None or (reason == OFFLINE_REASON and hub_dataset_cached(dataset_id)):
        return
    fix = fix or ("Pass image files or a folder instead, or a local copy of the dataset in the Hub layout (made where "
                  f"the Hub can be reached: `hf download {dataset_id} --repo-type dataset --local-dir DIR`)")
    if reason != OFFLINE_REASON and hub_dataset_cached(dataset_id):
        fix = f"A copy is in the datasets cache: set HF_HUB_OFFLINE=1 to read it. Or: {fix[0].lower()}{fix[1:]}"
    raise HubUnreachableError(f"Dataset {dataset_id!r} needs the Hugging Face Hub, and {reason}. {fix.rstrip('.')}.")


__all__ = ["hub_unreachable_reason", "require_hub", "require_hub_dataset", "hub_dataset_cached", "HubUnreachableError",
           "CONNECT_TIMEOUT"]
