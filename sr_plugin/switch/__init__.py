"""The switch: `apply` and its handle, the switching rule (a pure policy), the router that puts the small model
in the large one's place between two steps, the hand-off hook, and the delta calibration.

It never imports the accelerations: the two meet in the call tracker (`sr_plugin.pipeline.calls`)."""
