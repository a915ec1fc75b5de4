"""Cluster membership: member records and workflows, and failure detection."""
