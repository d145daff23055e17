"""Model-agnostic machinery: units and carried state, split plans, step schedules, the stage runtime."""
