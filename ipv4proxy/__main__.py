"""``python -m ipv4proxy``: the same as the ``ipv4proxy`` command."""

from ipv4proxy.cli import main

main()
