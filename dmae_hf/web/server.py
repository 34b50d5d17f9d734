# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""What the server lets a visitor do, decided once when it starts: the models and denoisers on offer, and the cost of
one request.

The page is meant for the open internet (a public Space), where any visitor can call its HTTP API directly. So a
visitor only ever picks a name from the lists below; the server maps it to what it loads (a packaged checkpoint, a
Hub id in the local cache, a local folder the operator named). Anything else, on any endpoint, gets `REFUSED`, one
message that is the same whatever was sent and whatever exists on the server, and nothing a visitor sends is opened
as a path or fetched from the Hub.

    >>> settings = ServerSettings.build(models=["me/my-vit"], denoisers=["dmae-tiny-cifar10-denoiser"])
    >>> settings.source("dmae-tiny-cifar10")          # what g loads for that choice
    >>> settings.source("../../etc")                   # ValueError(REFUSED)

Offered by default: the loadable short names of `dmae_hf.hub.available.available_models()` (the checkpoints shipped in
the package, then the released ones already in the local Hub cache). `dmae serve --model ... --denoiser ...` (or the
Space's settings, `$DMAE_SERVE_MODELS` and `$DMAE_SERVE_DENOISERS`, comma-separated) add short names, Hub ids and local
folders; a Hub id that is not cached is downloaded when the server starts. Released names that are not here (they need
a download, or are not published yet) are listed apart on the page with the route to publish them.
"""

import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import defaults

logger = logging.getLogger(__name__)

REFUSED = "This server does not offer that choice: pick a model and a denoiser from the lists on the page."
NO_DENOISER = "none"
ENV = {"models": "DMAE_SERVE_MODELS", "denoisers": "DMAE_SERVE_DENOISERS", "max_samples": "DMAE_SERVE_MAX_SAMPLES",
       "max_seconds": "DMAE_SERVE_MAX_SECONDS", "concurrency": "DMAE_SERVE_CONCURRENCY",
       "max_queue": "DMAE_SERVE_MAX_QUEUE"}

# The limits of one request, sized for a free CPU Space (2 vCPUs, 16 GB), where one visitor's request makes every
# other wait. The embedded 32x32 model votes on several hundred to about a thousand noisy samples a second there, so
# MAX_SAMPLES (n0 + n) covers the library's default n = 10,000 and answers within about 20 s at most; MAX_SECONDS
# stops a slower model (a ViT-B at 224x224 manages tens of samples a second on such a CPU) before it holds the
# server for long. One certification at a time: two would only share the same two cores. MAX_QUEUE visitors may wait
# (at most about MAX_QUEUE * MAX_SECONDS), and more are turned away at once instead of piling up.
MAX_SAMPLES = 20_000
MAX_SECONDS = 60.0
CONCURRENCY = 1
MAX_QUEUE = 10
MAX_UPLOAD_BYTES = 20_000_000
MAX_UPLOAD_PIXELS = 50_000_000


@dataclass(frozen=True)
class Limits:
    """What one request may cost (see the constants above). `max_samples` counts n0 + n; `max_seconds` the sampling
    time, after which the request stops its work and says so."""

    max_samples: int = MAX_SAMPLES
    max_seconds: float = MAX_SECONDS
    concurrency: int = CONCURRENCY
    max_queue: int = MAX_QUEUE
    max_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int = MAX_UPLOAD_PIXELS

    def __post_init__(self):
        for name in ("max_samples", "concurrency", "max_queue", "max_bytes", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{_setting(name)} must be a whole number >= 1, got {value!r}.")
        seconds = self.max_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not 0 < seconds < math.inf:
            raise ValueError(f"{_setting('max_seconds')} must be a positive number of seconds, got {seconds!r}.")

    def describe(self) -> str:
        at_once = "one certification" if self.concurrency == 1 else f"{self.concurrency} certifications"
        return (f"at most {self.max_samples:,} noisy samples (n0 + n) and {self.max_seconds:g} s of sampling per "
                f"request; {at_once} at a time, with up to {self.max_queue} more waiting")


@dataclass(frozen=True)
class ServerSettings:
    """The allow-list and the limits. `models` / `denoisers`: shown name -> what g loads; `unavailable`: shown name
    -> why it cannot be loaded now and how to make it loadable."""

    models: dict = field(default_factory=dict)
    denoisers: dict = field(default_factory=dict)
    unavailable: dict = field(default_factory=dict)
    limits: Limits = Limits()
    selected: str = defaults.EMBEDDED_MODEL

    @classmethod
    def build(cls, models=(), denoisers=(), limits: Limits | None = None, environ=None, **limit_values):
        """The shipped and cached checkpoints, plus `models` and `denoisers` (short names, Hub ids, local folders);
        each list defaults to the Space's setting in `environ` (default `os.environ`), and so does each limit not
        given in `limit_values` (max_samples, max_seconds, concurrency, max_queue). The first of `models` is the one
        selected when the page opens (default: the embedded model)."""
        from ..hub.available import available_models  # here, so that `dmae serve --help` imports no torch

        environ = os.environ if environ is None else environ
        models = list(models) or _split(environ.get(ENV["models"]))
        denoisers = list(denoisers) or _split(environ.get(ENV["denoisers"]))
        if limits is None:
            for name in ("max_samples", "max_seconds", "concurrency", "max_queue"):
                if limit_values.get(name) is None and environ.get(ENV[name]):
                    limit_values[name] = _number(ENV[name], environ[ENV[name]])
            limits = Limits(**{k: v for k, v in limit_values.items() if v is not None})
        offered = {"classifier": {}, "denoiser": {}}
        listed = available_models()
        for entry in listed.loadable:
            offered[entry.kind][entry.name] = _loadable_source(entry.name)
        unavailable = {entry.name: entry.hint for entry in listed.elsewhere}
        for kind, names in (("classifier", models), ("denoiser", denoisers)):
            for name in names:
                source, why = _operator_choice(name)
                if source is None:
                    logger.warning(f"dmae serve: {name} is not offered: {why}")
                    unavailable[name] = why
                else:
                    offered[kind][name] = source
                    unavailable.pop(name, None)
        selected = next((m for m in models if m in offered["classifier"]), defaults.EMBEDDED_MODEL)
        if selected not in offered["classifier"]:
            selected = next(iter(offered["classifier"]))
        return cls(offered["classifier"], offered["denoiser"], unavailable, limits, selected)

    def source(self, name, kind: str = "classifier"):
        """What g loads for the shown `name` (None for no denoiser), or `ValueError(REFUSED)` for any other value."""
        if kind == "denoiser" and name in (None, NO_DENOISER):
            return None
        table = self.models if kind == "classifier" else self.denoisers
        if not isinstance(name, str) or name not in table:
            raise ValueError(REFUSED)
        return table[name]


# ------------------------------------------------------------------------------------------------------------ sources
def _loadable_source(name: str) -> str:
    """What g loads for a loadable short name: the packaged folder of a shipped one, else the name (cached)."""
    from ..hub.names import packaged_path

    path = packaged_path(name)
    return name if path is None else str(path)


def _operator_choice(name: str):
    """(source, None), or (None, why) for a name the operator gave; a local path that does not exist is an error."""
    from ..hub.names import SHORT_NAMES, looks_like_short_name, packaged_path, repo_id

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"A model or denoiser to offer must be a short name, Hub id or folder, got {name!r}.")
    if packaged_path(name) is not None:  # shipped (offered anyway)
        return str(packaged_path(name)), None
    if os.path.isdir(name):
        return str(Path(name).resolve()), None
    if looks_like_short_name(name):
        if name not in SHORT_NAMES:
            raise ValueError(f"{name!r} is not a folder here nor a known short name "
                             f"({', '.join(SHORT_NAMES)}).")
        target = repo_id(name)
    elif name.count("/") == 1 and not name.startswith((".", "/", "~")):
        target = name
    else:
        raise ValueError(f"{name!r} is neither an existing folder nor a Hub id (namespace/name).")
    if _cached(target) or _download(target):
        return name, None
    reason = _hub_unreachable()
    return None, (f"{target} is not in this server's Hub cache and could not be downloaded"
                  + (f" ({reason})" if reason else "") + ".")


def _cached(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _download(repo: str) -> bool:
    """Fetch the operator's Hub model into the cache at start (weights, configs, code), so that it loads offline."""
    if _hub_unreachable():
        return False
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.py", "*.txt", "*.md"])
    except Exception as error:  # noqa: BLE001 any failure means: not offered, with the reason logged
        logger.warning(f"dmae serve: cannot download {repo}: {' '.join(str(error).split())[:300]}")
        return False
    return _cached(repo)


def _hub_unreachable():
    from ..hub.reach import hub_unreachable_reason

    return hub_unreachable_reason()


def _setting(name: str) -> str:
    """A limit's name as the operator sets it: `max_seconds (--max-seconds, $DMAE_SERVE_MAX_SECONDS)`."""
    return f"{name} (--{name.replace('_', '-')}, ${ENV[name]})" if name in ENV else name


def _split(value) -> list[str]:
    return [part.strip() for part in (value or "").replace("\n", ",").split(",") if part.strip()]


def _number(name, text):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"${name} must be a number, got {text!r}.") from None
    return int(value) if value.is_integer() and name != ENV["max_seconds"] else value


__all__ = ["Limits", "ServerSettings", "REFUSED", "NO_DENOISER", "ENV", "MAX_SAMPLES", "MAX_SECONDS", "CONCURRENCY",
           "MAX_QUEUE", "MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS"]
