"""What the command line's client commands are built on: txn syntax, cluster view, bench."""
