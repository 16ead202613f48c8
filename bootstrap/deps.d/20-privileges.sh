# Trust boundary (issue 10): systemd-analyze (security --offline of the shipped units),
# systemd-sysusers and systemd-tmpfiles (the node's users, owners and modes), passwd (useradd for
# tests with real users), acl (getfacl to inspect what tmpfiles granted).
APT_PACKAGES+=(systemd passwd acl)
