"""meshd: a decentralized private-cloud node daemon.

Every blade runs the same daemon; the daemons form a private mesh with no central
server. See docs/ARCHITECTURE.md for a tour of the packages.
"""

__version__ = "0.1.0"
