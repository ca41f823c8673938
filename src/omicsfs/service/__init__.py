"""Running omicsfs as a service: the control socket through which `omicsfs` commands reach a
running daemon, systemd's notify protocol, the journal, the fstab helper. The mount itself knows
nothing of them beyond a few calls."""
