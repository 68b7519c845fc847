"""ipv4proxy: an egress proxy that reaches every destination over IPv4 only.

Layers, each depending only on those below it: ``errors`` and ``config``; ``protocols``
(pure parsers); ``net`` (resolver, dialer, relay); ``server`` (asyncio glue); ``cli``.
"""

__version__ = "0.1.0"
