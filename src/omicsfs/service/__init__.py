"""Running omicsfs as a service: systemd's notify protocol, the journal, the fstab helper.

What a daemon needs to be run by a service manager rather than by hand; the mount itself knows
nothing of it beyond a few `notify` calls.
"""
