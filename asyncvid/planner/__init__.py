"""Offline prediction: unit profiles, link models, the speed model, and the reports of ``asyncvid plan``.

Nothing here runs during a parallel render except the split chooser's unit profile
(:func:`asyncvid.planner.profile.unit_costs`).
"""
