"""Export: deliver result objects to destinations by C-STORE, with retries that outlive restarts.

``outcomes`` classifies C-STORE statuses, ``policy`` turns an outcome into the
delivery's next state, ``scu`` talks DICOM (pynetdicom), ``stow`` STOW-RS to DICOMweb
destinations (dicomweb-client), ``dispatch`` picks one by the destination's type, and
``service`` runs the due deliveries from the journal.
"""
