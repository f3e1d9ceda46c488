"""Host side of edgefleet: deploy bundles to devices, show fleet status, send inference requests."""
