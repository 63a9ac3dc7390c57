"""The command line's subcommands, one module each; :mod:`cad_node.cli` builds the parser."""
