"""The contract shared by host and device: profiles, bundle manifest and format, signing, wire protocol.

Both sides import this package; it never imports either side.
"""
