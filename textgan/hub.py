"""Whether the Hugging Face hub can be reached, and its clients' offline mode for one call.

Without a network, the hub clients retry each request with back-off before they give up or fall
back to their local cache: about a minute, and a screen of warnings, for a name that a quick
connection test shows cannot be looked up. textgan checks first and, offline, reads the local
cache only (``local_files_only`` for models, :func:`offline` for datasets).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``, default huggingface.co) answers a TCP connection;
    False at once with ``HF_HUB_OFFLINE`` set, True where a proxy is configured (a direct connection
    says nothing about the proxy's)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "") or "https://huggingface.co")
    proxied = any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                                    "ALL_PROXY", "all_proxy"))
    if proxied or not endpoint.hostname:
        return True  # behind a proxy, or an endpoint we cannot parse: the hub client's own attempt decides
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or (80 if endpoint.scheme == "http" else 443)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def cache_only(name: str) -> bool:
    """Whether ``name`` must come from the local cache: it is no local path, and the hub cannot be
    reached (so asking the hub would only mean the client's retries before the same answer)."""
    return not Path(name).expanduser().exists() and not reachable()


@contextlib.contextmanager
def offline():
    """Within it, ``datasets`` and ``huggingface_hub`` read their local caches only (as with
    ``HF_HUB_OFFLINE=1``, which they read once, at import)."""
    flags = [("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
             ("datasets.config", "HF_DATASETS_OFFLINE")]
    saved = []
    for module_name, flag in flags:
        module = importlib.import_module(module_name)
        if hasattr(module, flag):
            saved.append((module, flag, getattr(module, flag)))
            setattr(module, flag, True)
    try:
        yield
    finally:
        for module, flag, value in saved:
            setattr(module, flag, value)
