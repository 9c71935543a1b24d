"""Constant Contact plugin for RemixCRM.

Importing this package starts nothing: no threads, sockets, files or config reads.
The hookimpls live in :mod:`remixcrm_plugin_ctct.hooks`; the work starts on the first event.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "flush"]


def flush(timeout: float = 5.0, retries: bool = False) -> bool:
    """Wait up to ``timeout`` seconds until nothing is in flight and nothing due can be sent
    (with ``retries``: nor waiting for a retry). Returns False at the timeout; unsent events
    stay recorded either way. Hosts call this before a planned shutdown, tests before leaving
    a ``responses`` block.
    """
    from .runtime import flush as _flush  # lazy: keeps `import remixcrm_plugin_ctct` free

    return _flush(timeout, retries)
