"""node.yaml against the journal: ``cad-node config diff`` / ``config apply`` and the dashboard's
drift banner (issue 24, item 6)."""
