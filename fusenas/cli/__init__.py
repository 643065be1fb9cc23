"""The command-line floor: ``fusenas`` (mount), ``mkfs``, ``status``, ``fsck``, ``scrub``,
``replace``, ``add-spare``; the daemon's wiring and its control socket.

The top floor: it may import every other floor, and no floor imports it.
"""
