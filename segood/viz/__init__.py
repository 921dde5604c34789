"""Pictures and viewers: report PNGs, the open3d anomaly viewer (interactive and headless), camera
overlays and PLY export of per-point scores."""
