"""Protocol logic shared by the agent and the fleet simulator, free of I/O (tested in-process)."""
