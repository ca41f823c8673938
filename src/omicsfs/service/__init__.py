"""What a running daemon shows and answers besides the file system: the control socket through
which `omicsfs` commands reach it, and the service manager's notifications."""
