"""The live dashboard: a read-only view of the session in the browser (``/dashboard/``), fed by server-sent events.

``state.py`` is the session's live state (pure), ``access.py`` the token rule (pure), ``runs.py`` the past
sessions of ``--history-dir``, ``routes.py`` the aiohttp routes, ``static/`` the page (no build step, no CDN).
"""
