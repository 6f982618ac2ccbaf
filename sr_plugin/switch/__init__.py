"""The switch: `apply` and its handle, the switching rule (a pure policy) and the cooperation schedules (plain
data), the router that follows a call's plan and puts the small model in the large one's place between two steps
(and back), and the hand-off hook.

It never imports the accelerations: the two meet in the call tracker (`sr_plugin.pipeline.calls`). Calibrations
(which need scikit-image) live in `sr_plugin.calibration`."""
