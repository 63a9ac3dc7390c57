"""Security at the node's edges: DICOM TLS contexts and log redaction (docs/security.md)."""
