"""Image definitions and the daemonless image toolkit (Debian package locks, OCI writer)."""
