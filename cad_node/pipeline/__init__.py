"""The node's hops after ingest, each committing its outcome before the next starts.

``assemble`` completes quiet series and routes them to jobs; ``work`` runs a
job's model and writes its SEG and SR; export (cad_node.export) delivers them.
"""
