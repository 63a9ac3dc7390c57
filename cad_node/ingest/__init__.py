"""Ingest: the Storage SCP, the spool it writes to, and the spool's crash recovery.

``scp.StorageSCP`` receives instances (PS3.4 Annex B), ``spool.Spool`` writes
them atomically, ``cad_node.store.instances.record_instance`` journals them and
``recovery.reindex_spool`` re-indexes files a crash left unrecorded. ``stow`` stores
the parts of a STOW-RS request (read by ``multipart``) through the same path.
"""
