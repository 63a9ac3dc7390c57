"""Model families behind the CadModel protocol, the registry and their CLI."""
